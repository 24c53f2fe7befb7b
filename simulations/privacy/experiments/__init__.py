"""The `fedadapt privacy` experiments, one module each; every module defines `EXPERIMENT` (see ../registry.py)."""
