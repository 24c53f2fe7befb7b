"""TLS material for a deployment: a private CA and the SuperLink's server certificate, made with `cryptography`.

Flower's SuperLink serves its Fleet, Control and Runtime APIs over TLS when started with
`--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`; SuperNodes (`--root-certificates`) and the `flwr` CLI (the
connection's `root-certificates` in `$FLWR_HOME/config.toml`) verify the server against the CA. The CA is made
per run (or per `fedadapt deploy certs` call) and its key never leaves the folder it is written to. Private keys
are written 0600; certificates 0644.

The server certificate names every host a client may dial (SubjectAltName: IP addresses and DNS names), by
default 127.0.0.1 and localhost; a Docker or remote deployment adds the SuperLink's service name or address.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALID_DAYS = 365  # the first server certificate; `fedadapt deploy renew` re-issues it from the CA
CA_VALID_DAYS = 3650  # the CA outlives many server certificates: nodes keep the same ca.pem across renewals


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate (what clients trust) and the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def write_private(path: Path, data: bytes) -> Path:
    """Write a secret 0600 from the start (never world-readable, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def check_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """Hosts as given, refused if empty or not an IP address / DNS name (ValueError naming the bad one)."""
    if not hosts:
        raise ValueError("the server certificate needs at least one host name or address")
    for host in hosts:
        name = host.replace("-", "").replace(".", "").replace("_", "")
        if not host or not (name.isalnum() or _is_ip(host)):
            raise ValueError(f"host {host!r} is neither an IP address nor a DNS name")
    return tuple(hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def write_tls(folder: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TlsFiles:
    """A fresh CA and a server certificate for `hosts` in `folder`: ca.pem, ca.key, server.pem, server.key."""
    hosts = check_hosts(hosts)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedadapt deployment CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
                   .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    write_private(folder / "ca.key", _pem_key(ca_key))
    write_private(files.server_key, _pem_key(server_key))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return files
