"""A node's identity, made on the node and kept there: the key pair it signs its Fleet requests with.

`ensure_node_keys(state)` writes `state/keys/node` (private, 0600) and `node.pub` the first time and only reads them
afterwards: a restart keeps the node's identity (the SuperLink keeps knowing its registered public key). It never
replaces an existing private key; a public key that does not belong to the private key is refused, not rewritten.
Only `node.pub` is meant to leave the machine (the operator registers it with `flwr supernode register`).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deployment.node_auth import NodeKeys, write_node_keys

KEY_NAME = "node"


def node_key_paths(state: Path) -> NodeKeys:
    keys = state / "keys"
    return NodeKeys(keys / KEY_NAME, keys / f"{KEY_NAME}.pub")


def public_key_line(private_key: Path) -> bytes:
    """The OpenSSH public key line of an OpenSSH EC private key (ValueError if it is not one)."""
    try:
        key = serialization.load_ssh_private_key(private_key.read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{private_key} is not a readable OpenSSH private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{private_key} is not an elliptic-curve key (Flower's node authentication needs one)")
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def ensure_node_keys(state: Path) -> tuple[NodeKeys, bool]:
    """The node's key pair under `state`/keys, made if absent; (keys, made now?)."""
    paths = node_key_paths(state)
    if not paths.private_key.exists():
        if paths.public_key.exists():
            raise ValueError(f"{paths.public_key} exists without its private key: refusing to make a new pair "
                             "over it (remove it if this node's old identity is really gone)")
        return write_node_keys(paths.private_key.parent, KEY_NAME), True
    mode = paths.private_key.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{paths.private_key} is readable by others (mode {mode:o}): chmod 600 it")
    line = public_key_line(paths.private_key)
    if not paths.public_key.exists():
        paths.public_key.write_bytes(line + b"\n")
    elif paths.public_key.read_bytes().split()[:2] != line.split()[:2]:
        raise ValueError(f"{paths.public_key} does not belong to {paths.private_key}: refusing to overwrite it")
    return paths, False
