"""The server's TLS files over their lifetime: made once, kept across restarts, the server certificate re-issued
from the CA before it expires.

The CA key (`ca.key`) never leaves the server's TLS folder; nodes get `ca.pem` only. Renewal keeps the CA (nodes
keep trusting the same `ca.pem`, nothing is copied to them again) and re-issues `server.pem`/`server.key` for the
hosts the old certificate named (plus any new ones). The SuperLink and the gateway read their certificate when they
start: restart them after a renewal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deployment.tls import TlsFiles, _pem_key, _san, check_hosts, write_private, write_tls

SERVER_DAYS = 90  # a renewed server certificate; short, since renewal is one command
RENEW_WITHIN_DAYS = 30  # `deploy renew` re-issues once the certificate expires within this many days


@dataclass(frozen=True)
class CertStatus:
    """What a server certificate names and until when."""

    hosts: tuple[str, ...]
    not_after: dt.datetime
    ca_not_after: dt.datetime

    def days_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or dt.datetime.now(dt.UTC))).total_seconds() / 86400


def tls_files(folder: Path) -> TlsFiles:
    return TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def ensure_tls(folder: Path, hosts: Sequence[str]) -> TlsFiles:
    """The TLS files in `folder`, made on first use and kept afterwards. ValueError when the existing server
    certificate does not name every host asked for (renew with those hosts instead of silently replacing)."""
    files = tls_files(folder)
    if not files.server_cert.is_file():
        return write_tls(folder, hosts)
    missing = set(check_hosts(hosts)) - set(read_status(folder).hosts)
    if missing:
        raise ValueError(f"the server certificate in {folder} does not name {', '.join(sorted(missing))}: "
                         f"run `fedadapt deploy renew --tls {folder} --force --host ...` with every host")
    return files


def read_status(folder: Path) -> CertStatus:
    """Hosts and expiry of `folder`/server.pem and of its CA (ValueError naming a missing or unreadable file)."""
    try:
        server = x509.load_pem_x509_certificate((folder / "server.pem").read_bytes())
        ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the certificates in {folder}: {exc}") from exc
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    hosts = [*names.get_values_for_type(x509.DNSName), *(str(ip) for ip in names.get_values_for_type(x509.IPAddress))]
    return CertStatus(tuple(hosts), server.not_valid_after_utc, ca.not_valid_after_utc)


def issue_server_cert(folder: Path, hosts: Sequence[str], days: int = SERVER_DAYS) -> TlsFiles:
    """A new server key and certificate for `hosts`, signed by `folder`/ca.key; the CA is unchanged. The new files
    replace the old ones only once both are written (a failure leaves the old pair in place)."""
    hosts = check_hosts(hosts)
    if days < 1:
        raise ValueError(f"--days must be >= 1, got {days}")
    try:
        ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"renewal needs the CA in {folder} (ca.key, ca.pem): {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / 'ca.key'} is not an EC key")
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = tls_files(folder)
    new_key = write_private(folder / "server.key.new", _pem_key(key))
    new_cert = folder / "server.pem.new"
    new_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    new_key.replace(files.server_key)
    new_cert.replace(files.server_cert)
    return files


def renew(folder: Path, days: int = SERVER_DAYS, within_days: float = RENEW_WITHIN_DAYS, force: bool = False,
          extra_hosts: Sequence[str] = ()) -> tuple[bool, CertStatus]:
    """Re-issue the server certificate when it expires within `within_days` (or `force`, or new hosts asked for);
    (renewed?, the certificate's status afterwards)."""
    status = read_status(folder)
    hosts = list(dict.fromkeys([*status.hosts, *extra_hosts]))
    if not force and status.days_left() > within_days and len(hosts) == len(status.hosts):
        return False, status
    issue_server_cert(folder, hosts, days)
    return True, read_status(folder)
