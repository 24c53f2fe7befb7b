"""`fedadapt deploy` refuses bad input with one line and exit 2 before anything starts; `deploy certs` writes a
CA and a server certificate that verifies for the hosts asked for, private keys 0600."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cli.main import main
from deployment.local import INSECURE_WARNING


@pytest.mark.parametrize(("argv", "message"), [
    (["local", "--nodes", "0", "--rounds", "2"], "--nodes must be >= 1"),
    (["local", "--nodes", "2", "--rounds", "0"], "--rounds must be >= 1"),
    (["local", "--nodes", "2", "--rounds", "1", "--fraction", "1.5"], "--fraction must be in (0, 1]"),
    (["local", "--nodes", "2", "--rounds", "1", "--data", "/nonexistent/market"], "/nonexistent/market"),
    (["local", "--nodes", "2", "--rounds", "1", "--set", "lr=fast"], "lr='fast' is not a number"),
    (["local", "--nodes", "2", "--rounds", "1", "--backbone", "/nonexistent/model"], "/nonexistent/model"),
    (["certs", "--host", "not a host!"], "neither an IP address nor a DNS name"),
    (["certs", "--nodes", "0"], "--nodes must be >= 1"),
    (["shards", "--data", "/nonexistent/market", "--nodes", "2"], "/nonexistent/market"),
])
def test_bad_options_exit_2_with_one_line_and_start_nothing(argv: list[str], message: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Every refusal names the problem in one line; no run folder content is written."""
    out = tmp_path / "out"
    rc = main(["deploy", *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_certs_verify_for_the_requested_hosts_and_keys_are_private(tmp_path: Path) -> None:
    """The server certificate is signed by the CA and names every --host; node keys are EC P-384 in OpenSSH
    format (what `flwr supernode register` and `--auth-supernode-private-key` read)."""
    # Execute
    rc = main(["deploy", "certs", "--out", str(tmp_path), "--nodes", "2", "--host", "superlink", "--host", "10.0.0.7"])
    # Assert
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert rc == 0 and names.get_values_for_type(x509.DNSName) == ["superlink"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    for name in ("ca.key", "server.key", "node-0", "node-1"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    public = serialization.load_ssh_public_key((tmp_path / "node-1.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"


def test_insecure_says_so_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """--insecure logs a warning naming both protections it switches off, before anything else happens."""
    rc = main(["deploy", "local", "--insecure", "--nodes", "2", "--rounds", "1", "--data", "/nonexistent/market",
               "--out", str(tmp_path / "out")])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert rc == 2 and INSECURE_WARNING in warnings
    assert "no TLS" in INSECURE_WARNING and "no node authentication" in INSECURE_WARNING
