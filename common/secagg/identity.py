"""Long-lived client identity keys (Ed25519) and the registry of their public halves.

Why: the server relays every public key and survivor list of a secure round. Trusted to do so honestly
(Flower's SecAgg+, and this project before issue 23), a server that hands a client its own keys in place of a
peer's receives that peer's shares and can unmask anyone; one that tells two groups of clients different
survivor lists collects both kinds of share of one client. With identities, each client signs its key
advertisement and the survivor list it is given (common/secagg/client.py), and its peers verify those
signatures against a registry the server cannot write.

Enrolment: a client draws its identity key once, on its own disk, in its state folder beside its
anonymization secret (`<state dir>/partition-<id>/secagg-identity.key`, 64 hex characters, mode 0600,
common/federation/client_secret.py says where the state folder is), and its public half is registered out of
band: the operator collects the public keys into a registry file (JSON `{"identities": {"partition-<id>":
"<hex>"}}`) that every client reads from its own disk. `fedadapt simulate` enrols every partition before any
process starts and writes `RUN/secagg-identities.json` (`enrol_run`); in a deployment the operator runs the same
enrolment on each node and gives every node the registry, named by the node config's `secagg-identities`
(the node config is set by the node's operator, so the server can neither switch the checks off nor point a
client at another registry). Honesty about simulation: every partition's key lives on one machine, in folders
the server process could read; in a deployment each key stays on its node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.federation.client_secret import create_random_file, secret_path

IDENTITY_FILE = "secagg-identity.key"
REGISTRY_FILE = "secagg-identities.json"
KEY_BYTES = 32


def identity_path(state_dir: Path, partition_id: int) -> Path:
    """Where partition `partition_id` keeps its identity key (beside its anonymization secret)."""
    return secret_path(state_dir, partition_id).parent / IDENTITY_FILE


def public_half(private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def enrol(state_dir: Path, partition_id: int) -> bytes:
    """The partition's identity public key, drawing its private key first if it has none (exclusive create:
    two processes racing both end up with the one key that won)."""
    path = identity_path(state_dir, partition_id)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_random_file(path, KEY_BYTES)
    return public_half(load_identity(state_dir, partition_id))


def load_identity(state_dir: Path, partition_id: int) -> bytes:
    """The partition's identity private key; ValueError naming the file when it is missing or corrupt."""
    path = identity_path(state_dir, partition_id)
    if not path.is_file():
        raise ValueError(f"{path}: no secure-aggregation identity key; this client was not enrolled (fedadapt "
                         "simulate enrols every partition; in a deployment enrol the node before it joins)")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: corrupt identity key (expected {KEY_BYTES * 2} hex characters)")
    return key


def write_registry(path: Path, keys: Mapping[int, bytes]) -> Path:
    """Write the registry: partition id -> identity public key."""
    body = {"identities": {f"partition-{pid}": key.hex() for pid, key in sorted(keys.items())}}
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path


def load_registry(path: str | Path) -> frozenset[bytes]:
    """The registered identity public keys; ValueError naming the file and the problem."""
    try:
        body = json.loads(Path(path).read_text())
        entries = body["identities"]
        keys = [bytes.fromhex(v) for v in entries.values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"secagg-identities {path}: not a readable identity registry ({exc})") from exc
    if not keys or any(len(k) != KEY_BYTES for k in keys) or len(set(keys)) != len(keys):
        raise ValueError(f"secagg-identities {path}: needs distinct {KEY_BYTES}-byte keys, one per client")
    return frozenset(keys)


def enrol_partitions(state_dir: Path, partitions: int, registry: Path) -> Path:
    """Enrol partitions 0..partitions-1 under `state_dir` and write their registry to `registry`."""
    return write_registry(registry, {pid: enrol(state_dir, pid) for pid in range(partitions)})
