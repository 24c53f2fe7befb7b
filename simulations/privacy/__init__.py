"""`fedadapt privacy`: attacks on trained adapter banks. `run.py` runs the chosen experiments, `registry.py` finds
them (one module each in `experiments/`), the other modules are their shared parts (data pools, federated runs,
client updates, attacks, the report)."""
