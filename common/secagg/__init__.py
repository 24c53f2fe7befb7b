"""Secure aggregation (SecAgg+, Bell et al. 2020) for per-bank sums, on `cryptography`'s primitives.

Pure: numpy + cryptography, no Flower, no torch. crypto (X25519, HKDF, AES-GCM, AES-CTR PRG), shamir (secret
sharing over GF(2^521 - 1)), fixedpoint (encoding into Z_(2^bits)), graph (who masks with whom, per vector),
layout (banks <-> vectors in the segment-visible and segment-hidden modes), identity (clients' enrolled Ed25519
keys and their registry), client / server (the stages), wire (the fields of each stage's messages, checked)
and inmemory (all parties in one process, for tests).
"""
