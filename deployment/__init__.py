"""Running the federation on real machines (Flower's deployment runtime): the server side, edge nodes that join
from other hosts, the Fleet-only gateway in front of the SuperLink, certificate renewal, node keys made on the node,
and a local deployment on one machine (`local.py`) that reuses the process tools of `simulations/runner/`.

Not a simulation: the same ClientApp/ServerApp run as separate processes (or containers, `docker/`) that talk over
the Fleet API.
"""
