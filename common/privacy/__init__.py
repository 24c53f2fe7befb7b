"""Privacy: client-level differential privacy (dp.py) and its accountant (accountant.py)."""
