"""Running the federation on real machines: the server side, edge nodes that join from other hosts, the Fleet-only
gateway in front of the SuperLink, certificate renewal and the checks of the container files."""
