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
    (["server", "--dir", "SRV", "--fleet-address", "10.0.0.1:9092"], "--host is required"),
    (["server", "--dir", "SRV", "--host", "a b", "--fleet-address", "10.0.0.1:9092"], "neither an IP address"),
    (["server", "--dir", "SRV", "--host", "srv", "--fleet-address", "10.0.0.1"], "--fleet-address must be HOST:PORT"),
    (["node", *("--superlink", "srv", "--root-cert", "/nonexistent/ca.pem", "--data", "/nonexistent/d", "--state",
                "ST", "--partition-id", "0", "--num-partitions", "2")], "--superlink must be HOST:PORT"),
    (["node", *("--superlink", "srv:9092", "--root-cert", "/nonexistent/ca.pem", "--data", "/nonexistent/d",
                "--state", "ST", "--partition-id", "0", "--num-partitions", "2")], "/nonexistent/ca.pem"),
    (["node", *("--superlink", "srv:9092", "--root-cert", "/nonexistent/ca.pem", "--data", "/nonexistent/d",
                "--state", "ST", "--partition-id", "2", "--num-partitions", "2")], "--partition-id 2 is outside"),
    (["renew", "--tls", "/nonexistent/tls"], "cannot read the certificates in /nonexistent/tls"),
    (["shards", "--data", "/nonexistent/market", "--nodes", "2"], "/nonexistent/market"),
])
def test_bad_options_exit_2_with_one_line_and_start_nothing(argv: list[str], message: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Every refusal names the problem in one line; no run folder content is written."""
    out = tmp_path / "out"
    argv = [str(out) if a in ("SRV", "ST") else a for a in argv]
    extra = [] if argv[0] in ("server", "node", "renew") else ["--out", str(out)]
    rc = main(["deploy", *argv, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_certs_verify_for_the_requested_hosts_and_hold_no_node_key(tmp_path: Path) -> None:
    """The server certificate is signed by the CA and names every --host; private keys are 0600; no node key is
    made on the server (nodes make their own)."""
    # Execute
    rc = main(["deploy", "certs", "--out", str(tmp_path), "--host", "superlink", "--host", "10.0.0.7"])
    # Assert
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert rc == 0 and names.get_values_for_type(x509.DNSName) == ["superlink"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    for name in ("ca.key", "server.key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem", "server.key", "server.pem"]


def test_node_key_is_made_once_on_the_node_and_never_overwritten(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`deploy node-key` makes an EC P-384 OpenSSH pair (private 0600) and prints the public key; a second call
    keeps the same pair; a public key without its private key, or one of another key, is refused, not replaced."""
    # Execute
    first = main(["deploy", "node-key", "--state", str(tmp_path / "a")])
    printed = capsys.readouterr().out
    public = (tmp_path / "a" / "keys" / "node.pub").read_bytes()
    private = (tmp_path / "a" / "keys" / "node").read_bytes()
    second = main(["deploy", "node-key", "--state", str(tmp_path / "a")])
    kept = capsys.readouterr().out
    (tmp_path / "b" / "keys").mkdir(parents=True)
    (tmp_path / "b" / "keys" / "node.pub").write_bytes(public)
    orphan = main(["deploy", "node-key", "--state", str(tmp_path / "b")])
    orphan_err = capsys.readouterr().err
    main(["deploy", "node-key", "--state", str(tmp_path / "c")])
    (tmp_path / "c" / "keys" / "node.pub").write_bytes(public)  # someone else's public key
    mismatch = main(["deploy", "node-key", "--state", str(tmp_path / "c")])
    mismatch_err = capsys.readouterr().err
    # Assert
    key = serialization.load_ssh_public_key(public)
    assert first == 0 and isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    assert public.decode().strip() in printed and "(new)" in printed
    assert (tmp_path / "a" / "keys" / "node").stat().st_mode & 0o777 == 0o600
    assert second == 0 and "kept from an earlier start" in kept
    assert (tmp_path / "a" / "keys" / "node").read_bytes() == private
    assert orphan == 2 and "without its private key" in orphan_err and not (tmp_path / "b" / "keys" / "node").exists()
    assert mismatch == 2 and "does not belong to" in mismatch_err
    assert (tmp_path / "c" / "keys" / "node.pub").read_bytes() == public


def test_renew_reissues_the_server_certificate_from_the_same_ca(tmp_path: Path) -> None:
    """Not due: nothing changes. Due (here: --within beyond its expiry) or --force: a new key and certificate,
    signed by the unchanged CA (nodes keep their ca.pem), for the old hosts plus any new --host."""
    # Prepare
    main(["deploy", "certs", "--out", str(tmp_path), "--host", "srv.example.org"])
    ca_before, cert_before = (tmp_path / "ca.pem").read_bytes(), (tmp_path / "server.pem").read_bytes()
    key_before = (tmp_path / "server.key").read_bytes()
    # Execute
    not_due = main(["deploy", "renew", "--tls", str(tmp_path)])
    unchanged = (tmp_path / "server.pem").read_bytes() == cert_before
    due = main(["deploy", "renew", "--tls", str(tmp_path), "--within", "400", "--days", "30", "--host", "10.1.2.3"])
    # Assert
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    life = server.not_valid_after_utc - server.not_valid_before_utc
    assert not_due == 0 and unchanged and due == 0
    assert (tmp_path / "ca.pem").read_bytes() == ca_before and (tmp_path / "server.key").read_bytes() != key_before
    assert names.get_values_for_type(x509.DNSName) == ["srv.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert 29.9 < life.total_seconds() / 86400 < 30.1
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.new"))


def test_server_keeps_its_ca_across_starts_and_refuses_a_host_its_certificate_lacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`deploy server --init-only` twice: the same CA (nodes need nothing new) and secret; asking for a host the
    certificate does not name is refused with the renewal command, not answered with a new CA."""
    # Execute
    argv = ["deploy", "server", "--dir", str(tmp_path / "srv"), "--host", "10.0.0.1", "--fleet-address",
            "10.0.0.1:9092", "--init-only"]
    first = main(argv)
    ca, secret = (tmp_path / "srv" / "tls" / "ca.pem").read_bytes(), (tmp_path / "srv" / "secret" / "superexec")
    secret_bytes = secret.read_bytes()
    second = main(argv)
    capsys.readouterr()
    other = main([*argv[:4], "--host", "other.example.org", *argv[6:]])
    err = capsys.readouterr().err
    # Assert
    assert first == 0 and second == 0 and (tmp_path / "srv" / "tls" / "ca.pem").read_bytes() == ca
    assert secret.read_bytes() == secret_bytes and secret.stat().st_mode & 0o777 == 0o600
    assert other == 2 and "does not name other.example.org" in err and "deploy renew" in err
    config = (tmp_path / "srv" / "flwr" / "config.toml").read_text()
    assert 'address = "127.0.0.1:9093"' in config  # the Control API connection is loopback only


def test_insecure_says_so_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """--insecure logs a warning naming both protections it switches off, before anything else happens."""
    rc = main(["deploy", "local", "--insecure", "--nodes", "2", "--rounds", "1", "--data", "/nonexistent/market",
               "--out", str(tmp_path / "out")])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert rc == 2 and INSECURE_WARNING in warnings
    assert "no TLS" in INSECURE_WARNING and "no node authentication" in INSECURE_WARNING
