"""SuperNode authentication the way Flower 1.42 does it: EC key pairs, registered through the `flwr` CLI.

Flower 1.42's CLI-managed mode (installed sources: flwr/cli/supernode/register.py, flower-supernode's
`--auth-supernode-private-key`): the SuperLink runs with `--enable-supernode-auth`; each SuperNode owns an
elliptic-curve key pair on a NIST curve (here SECP384R1) in OpenSSH format; an operator registers the node's
*public* key with `flwr supernode register <public key> <connection>` (over the TLS Control API), and the node
signs its requests with its private key. A node whose public key was not registered is refused by the
SuperLink. The private key stays on the node (written 0600); only the public key is handed to the operator.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deployment.tls import write_private


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's key files: the private key stays on the node, the public key is registered."""

    private_key: Path
    public_key: Path


def write_node_keys(folder: Path, name: str) -> NodeKeys:
    """A fresh SECP384R1 key pair in OpenSSH format: `<name>` (0600) and `<name>.pub`."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = write_private(folder / name, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = folder / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return NodeKeys(private, public)


def register_node(flwr: str, public_key: Path, connection: str, env: dict[str, str], timeout: float = 60.0
                  ) -> int:
    """`flwr supernode register` the public key on the connection's SuperLink; the node id it was given.

    RuntimeError with the CLI's output if the SuperLink refused it (e.g. a key registered twice)."""
    cmd = [flwr, "supernode", "register", str(public_key), connection, "--format", "json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        reply = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        reply = {}
    if proc.returncode != 0 or not reply.get("success"):
        raise RuntimeError(f"flwr supernode register {public_key.name} failed (exit {proc.returncode}): "
                           f"{(proc.stdout + proc.stderr).strip()[-500:]}")
    return int(reply["node-id"])
