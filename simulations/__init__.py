"""What runs the federation and measures it on one machine, one subpackage per purpose.

- `runner/`: `fedadapt simulate` (preflight, Flower's simulation runtime, run lock, process reaper, reports).
- `bench/`: `fedadapt bench` measurements, each a module registered in `bench/__init__.py`.
- `privacy/`: `fedadapt privacy` experiments (attacks on trained runs), each a module registered in
  `privacy/registry.py`.

Edge deployment is not a simulation: it lives in the top-level `deployment/` package.
"""
