"""`fedadapt privacy curve --unit user`: the user-level privacy-utility curve (issue 18); see curve.py."""
