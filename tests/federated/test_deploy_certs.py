"""Specification of ``feddx.federated.certs``: the credentials of a deployed federation."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from feddx.errors import ConfigError
from feddx.federated.certs import (
    CredentialsError,
    generate_credentials,
    load_credentials,
    validate_node_names,
)

NODES = ["hospital-a", "hospital-b"]


@pytest.fixture(scope="module")
def creds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("creds")
    generate_credentials(
        out, NODES, hostnames=["feddx-superlink.feddx.svc"], ip_addresses=["10.0.0.7"]
    )
    return out


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_ca_server_cert_and_one_key_pair_per_node(creds_dir: Path) -> None:
    creds = load_credentials(creds_dir)
    assert sorted(creds.nodes) == NODES
    for path in (creds.ca_cert, creds.ca_key, creds.server_cert, creds.server_key):
        assert path.is_file()
    for keys in creds.nodes.values():
        assert keys.private_key.is_file() and keys.public_key.is_file()
    manifest = json.loads((creds_dir / "manifest.json").read_text())
    assert sorted(manifest["nodes"]) == NODES


def test_private_keys_are_owner_only_and_public_files_are_readable(creds_dir: Path) -> None:
    creds = load_credentials(creds_dir)
    private = [
        creds.ca_key,
        creds.server_key,
        creds.superexec_secret,
        *(k.private_key for k in creds.nodes.values()),
    ]
    assert {_mode(p) for p in private} == {0o600}
    public = [creds.ca_cert, creds.server_cert, *(k.public_key for k in creds.nodes.values())]
    assert {_mode(p) for p in public} == {0o644}
    assert not list(creds_dir.rglob("*.tmp")), "no temp files left behind"


def test_server_certificate_is_signed_by_the_ca_and_names_loopback_and_extra_names(
    creds_dir: Path,
) -> None:
    creds = load_credentials(creds_dir)
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "feddx-superlink.feddx.svc",
    }
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.7"),
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    key = load_pem_private_key(creds.server_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()


def test_node_keys_are_p384_openssh_keys_that_flower_accepts(creds_dir: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    for keys in load_credentials(creds_dir).nodes.values():
        text = keys.private_key.read_text()
        assert text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----"), "Flower rejects PEM keys"
        private = load_ssh_private_key(keys.private_key.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        public_line = keys.public_key.read_text()
        assert public_line.startswith("ecdsa-sha2-nistp384 ")
        # The exact loader `flwr supernode register` uses.
        assert try_load_public_key(keys.public_key)
        assert keys.fingerprint.startswith("SHA256:")


def test_each_node_gets_a_distinct_key(creds_dir: Path) -> None:
    creds = load_credentials(creds_dir)
    publics = {k.public_key.read_text() for k in creds.nodes.values()}
    assert len(publics) == len(NODES)


def test_generating_the_same_request_again_changes_nothing(tmp_path: Path) -> None:
    _, created = generate_credentials(tmp_path, NODES)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    _, created_again = generate_credentials(tmp_path, list(reversed(NODES)))
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert created and not created_again
    assert before == after


def test_a_different_request_is_refused_unless_forced(tmp_path: Path) -> None:
    generate_credentials(tmp_path, NODES)
    ca_before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(CredentialsError, match="--force"):
        generate_credentials(tmp_path, [*NODES, "hospital-c"])
    with pytest.raises(CredentialsError, match="--force"):
        generate_credentials(tmp_path, NODES, hostnames=["other.example"])
    creds, created = generate_credentials(tmp_path, [*NODES, "hospital-c"], force=True)
    assert created and "hospital-c" in creds.nodes
    assert (tmp_path / "ca.pem").read_bytes() != ca_before


def test_stray_key_files_without_a_manifest_are_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text("someone else's CA key")
    with pytest.raises(CredentialsError, match=r"ca\.key exists"):
        generate_credentials(tmp_path, NODES)
    assert (tmp_path / "ca.key").read_text() == "someone else's CA key"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "at least one"),
        (["Hospital_A"], "not valid"),
        (["-a"], "not valid"),
        (["a" * 64], "not valid"),
        (["hospital-a", "hospital-a"], "twice"),
    ],
)
def test_node_names_must_be_unique_dns_labels(names: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_node_names(names)


def test_bad_hostnames_and_ips_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        generate_credentials(tmp_path, NODES, ip_addresses=["10.0.0.300"])
    with pytest.raises(ConfigError, match="not a valid DNS name"):
        generate_credentials(tmp_path, NODES, hostnames=["bad host"])
    assert not any(tmp_path.iterdir()), "nothing written for an invalid request"


def test_loading_a_missing_or_incomplete_folder_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="feddx deploy certs"):
        load_credentials(tmp_path)
    generate_credentials(tmp_path, NODES)
    (tmp_path / "nodes" / "hospital-b.pub").unlink()
    with pytest.raises(CredentialsError, match=r"hospital-b\.pub is listed"):
        load_credentials(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="unreadable"):
        load_credentials(tmp_path)


def test_unknown_node_is_a_clear_error(creds_dir: Path) -> None:
    with pytest.raises(CredentialsError, match="no keys for node 'hospital-z'"):
        load_credentials(creds_dir).node("hospital-z")
