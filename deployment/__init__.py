"""Edge deployment on Flower's runtime (SuperLink, SuperNodes): TLS material, node keys, a local deployment.

Not a simulation: the same ClientApp/ServerApp run as separate processes (or containers, `docker/`) that talk
over the Fleet API. It reuses the process tools of `simulations/runner/` (free ports, the reaper, the run lock).
"""
