"""Recommendation on backbone + adapters: ranking metrics, the two-tower model, central training baselines.

`metrics` is pure numpy; `model` and `train` hold the torch code; `experiment` runs the centralized baselines
of `fedadapt train` (parsed in cli/train.py).
Import from the submodules (`from common.rec.model import RecModel`) so that using the metrics never
loads torch.
"""
