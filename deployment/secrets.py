"""The SuperExec shared secret: one random file per side, made once, kept, never sent anywhere.

Flower 1.42 authenticates SuperExec against a Runtime API (the SuperLink's for the ServerApp, a SuperNode's for its
ClientApp) with an HMAC over this secret when both are started with `--superexec-auth-secret-file` in
`--isolation process`; without it, whoever reaches the Runtime API can pull the tasks (and the app and its inputs).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from deployment.tls import write_private


def ensure_secret(path: Path) -> Path:
    """`path` holding 32 random bytes as hex (0600), made if absent and kept otherwise."""
    if path.exists():
        if not path.read_bytes().strip():
            raise ValueError(f"{path} is empty: Flower refuses an empty SuperExec secret")
        return path
    return write_private(path, secrets.token_hex(32).encode())
