"""Credentials for a deployed federation: a private CA, the SuperLink's TLS certificate, and one
authentication key pair per institution's SuperNode.

Flower 1.42 secures a deployment in two independent layers, and this module makes what both need:

* **TLS** between every SuperNode (and the ``flwr`` CLI) and the SuperLink. The SuperLink serves
  ``superlink.pem``/``superlink.key``, signed by our own CA (``ca.pem``); clients verify the
  server against ``ca.pem`` (``--root-certificates``), so no public CA is involved. The server
  certificate names ``localhost`` and ``127.0.0.1`` plus whatever hostnames/IPs the caller adds
  (e.g. the Kubernetes service name ``feddx-superlink.feddx.svc``).
* **SuperNode authentication**: each institution's SuperNode signs its requests with an EC P-384
  key. Flower only reads these keys in OpenSSH format (PEM keys are rejected), and the SuperLink
  only admits public keys registered with ``flwr supernode register``. We write them with the
  ``cryptography`` package, so no ``ssh-keygen`` is needed.

Layout of the output folder::

    manifest.json           what was generated (nodes, SANs, fingerprints, expiry); written last
    ca.pem  ca.key          the federation's CA (ca.key: 0600, keep offline after set-up)
    superlink.pem           SuperLink TLS certificate (chain: leaf only, CA in ca.pem)
    superlink.key           SuperLink TLS private key (0600)
    superexec.secret        shared secret of the SuperLink and its ServerApp executor when they
                            run as separate containers (``--isolation process``; 0600)
    nodes/<name>.key        SuperNode auth private key, OpenSSH (0600) -- give ONLY to <name>
    nodes/<name>.pub        SuperNode auth public key, OpenSSH -- register it on the SuperLink

Every file is written atomically (temp file + rename) and private keys are created 0600 from the
start (never world-readable for an instant). ``manifest.json`` is written last, so a folder with a
manifest is complete. Generating again is idempotent: the same request against an existing
folder changes nothing; a different one is refused unless ``force=True``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from feddx.errors import ConfigError, FeddxError
from feddx.io import atomic_write_bytes

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_HOSTNAMES = ("localhost",)
DEFAULT_IP_ADDRESSES = ("127.0.0.1",)
DEFAULT_VALIDITY_DAYS = 365

# Node names become file names, Kubernetes object names and SuperNode labels: DNS-1123 labels.
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9*]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)


class CredentialsError(FeddxError):
    """A credentials folder is missing, incomplete, corrupt, or would be overwritten."""

    exit_code = 2


@dataclass(frozen=True)
class NodeKeys:
    """One SuperNode's authentication key pair (OpenSSH EC P-384)."""

    name: str
    private_key: Path
    public_key: Path
    fingerprint: str  # "SHA256:<hex>" of the OpenSSH public key line, for audit and logs


@dataclass(frozen=True)
class FederationCredentials:
    """Paths to everything :func:`generate_credentials` wrote, as read back from the manifest."""

    root: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    superexec_secret: Path
    hostnames: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    nodes: dict[str, NodeKeys]
    not_after: dt.datetime

    def node(self, name: str) -> NodeKeys:
        """The key pair of node ``name``; :class:`CredentialsError` if it was not generated."""
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(sorted(self.nodes)) or "none"
            raise CredentialsError(
                f"{self.root / MANIFEST_NAME}: no keys for node '{name}' (known: {known})"
            ) from None


def validate_node_names(names: Sequence[str]) -> list[str]:
    """Check node names (DNS-1123 labels, unique, at least one) and return them as a list.

    Raises :class:`ConfigError` naming the first bad name.
    """
    result = [n.strip() for n in names if n.strip()]
    if not result:
        raise ConfigError("at least one node name is needed (e.g. --nodes hospital-a,hospital-b)")
    seen: set[str] = set()
    for name in result:
        if not _NODE_NAME.match(name):
            raise ConfigError(
                f"node name '{name}' is not valid: use lower-case letters, digits and '-' "
                "(a DNS label, at most 63 characters), e.g. 'hospital-a'"
            )
        if name in seen:
            raise ConfigError(f"node name '{name}' is given twice")
        seen.add(name)
    return result


def _validate_sans(
    hostnames: Sequence[str], ip_addresses: Sequence[str]
) -> tuple[list[str], list[str]]:
    hosts = list(dict.fromkeys([*DEFAULT_HOSTNAMES, *(h.strip() for h in hostnames if h.strip())]))
    for host in hosts:
        if not _HOSTNAME.match(host):
            raise ConfigError(f"hostname '{host}' is not a valid DNS name")
    ips = list(
        dict.fromkeys([*DEFAULT_IP_ADDRESSES, *(i.strip() for i in ip_addresses if i.strip())])
    )
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"'{ip}' is not an IP address") from None
    return hosts, ips


def _new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ssh_fingerprint(public_line: bytes) -> str:
    # The digest `ssh-keygen -l -E sha256` prints: SHA-256 of the key blob (2nd field).
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _make_ca(
    now: dt.datetime, not_after: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_ec_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "feddx federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, "feddx federation CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hostnames: Sequence[str],
    ips: Sequence[str],
    now: dt.datetime,
    not_after: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_ec_key()
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "feddx federation"),
                    x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _make_node_keys(name: str) -> tuple[bytes, bytes]:
    """An EC P-384 key pair in OpenSSH format, the only format ``flower-supernode`` reads."""
    key = _new_ec_key()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" feddx-{name}\n".encode()


def _request(nodes: Sequence[str], hostnames: Sequence[str], ips: Sequence[str]) -> dict[str, Any]:
    return {"nodes": sorted(nodes), "hostnames": sorted(hostnames), "ip_addresses": sorted(ips)}


def generate_credentials(
    out_dir: Path,
    nodes: Sequence[str],
    *,
    hostnames: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    force: bool = False,
) -> tuple[FederationCredentials, bool]:
    """Create a CA, a SuperLink TLS certificate and one SuperNode key pair per node in ``out_dir``.

    Parameters
    ----------
    out_dir
        Folder to write into (created if missing).
    nodes
        Institution names (DNS labels such as ``hospital-a``), one SuperNode each.
    hostnames, ip_addresses
        Extra subject alternative names for the SuperLink certificate, in addition to
        ``localhost`` and ``127.0.0.1`` (e.g. ``feddx-superlink``, ``feddx-superlink.feddx.svc``,
        a public DNS name, a load balancer IP).
    validity_days
        Lifetime of the CA and the server certificate.
    force
        Replace whatever credentials ``out_dir`` already holds.

    Returns
    -------
    (credentials, created)
        ``created`` is False when ``out_dir`` already held credentials for exactly this request
        and nothing was written.

    Raises
    ------
    ConfigError
        A node name, hostname or IP address is invalid, or ``validity_days`` < 1.
    CredentialsError
        ``out_dir`` holds other credentials (or stray files where ours would go) and ``force`` is
        False.
    """
    names = validate_node_names(nodes)
    hosts, ips = _validate_sans(hostnames, ip_addresses)
    if validity_days < 1:
        raise ConfigError(f"validity_days must be at least 1, got {validity_days}")
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME

    if not force and manifest_path.exists():
        existing = load_credentials(out_dir)
        same = _request(names, hosts, ips) == _request(
            list(existing.nodes), existing.hostnames, existing.ip_addresses
        )
        if same:
            return existing, False
        raise CredentialsError(
            f"{out_dir} already holds federation credentials for other nodes or hostnames "
            f"(nodes: {', '.join(sorted(existing.nodes))}); pass --force to replace them all "
            "(every node then needs its new key and the SuperLink its new certificate)"
        )
    if not force:
        targets = ["ca.pem", "ca.key", "superlink.pem", "superlink.key", "superexec.secret"]
        targets += [f"nodes/{n}.{ext}" for n in names for ext in ("key", "pub")]
        clash = [t for t in targets if (out_dir / t).exists()]
        if clash:
            raise CredentialsError(
                f"{out_dir / clash[0]} exists but {manifest_path} does not (an interrupted or "
                "foreign set-up?); pass --force to overwrite"
            )

    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=validity_days)
    ca_key, ca_cert = _make_ca(now, not_after)
    server_key, server_cert = _make_server_cert(ca_key, ca_cert, hosts, ips, now, not_after)

    # The manifest is removed first and written last: a folder is valid only when it is complete.
    manifest_path.unlink(missing_ok=True)
    atomic_write_bytes(out_dir / "ca.key", _pem_private(ca_key), private=True)
    atomic_write_bytes(
        out_dir / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM), private=False
    )
    atomic_write_bytes(out_dir / "superlink.key", _pem_private(server_key), private=True)
    atomic_write_bytes(
        out_dir / "superlink.pem",
        server_cert.public_bytes(serialization.Encoding.PEM),
        private=False,
    )
    # Flower reads the file as raw bytes: hex text keeps it printable for Kubernetes Secrets.
    atomic_write_bytes(out_dir / "superexec.secret", secrets.token_hex(32).encode(), private=True)
    node_entries: dict[str, dict[str, str]] = {}
    for name in names:
        private, public = _make_node_keys(name)
        atomic_write_bytes(out_dir / "nodes" / f"{name}.key", private, private=True)
        atomic_write_bytes(out_dir / "nodes" / f"{name}.pub", public, private=False)
        node_entries[name] = {
            "private_key": f"nodes/{name}.key",
            "public_key": f"nodes/{name}.pub",
            "fingerprint": _ssh_fingerprint(public),
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": now.isoformat(timespec="seconds"),
        "not_after": not_after.isoformat(timespec="seconds"),
        "ca": {"cert": "ca.pem", "key": "ca.key"},
        "superlink": {
            "cert": "superlink.pem",
            "key": "superlink.key",
            "hostnames": hosts,
            "ip_addresses": ips,
            "superexec_secret": "superexec.secret",
        },
        "nodes": node_entries,
    }
    atomic_write_bytes(
        manifest_path, (json.dumps(manifest, indent=2) + "\n").encode(), private=False
    )
    return load_credentials(out_dir), True


def load_credentials(out_dir: Path) -> FederationCredentials:
    """Read ``out_dir/manifest.json`` and check that every file it lists is present.

    Raises :class:`CredentialsError` naming the missing or malformed piece.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialsError(
            f"{manifest_path} not found: generate credentials first "
            f"(feddx deploy certs --out {out_dir} --nodes ...)"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise CredentialsError(f"{manifest_path}: unreadable ({e})") from None
    try:
        if raw["format"] != MANIFEST_FORMAT:
            raise CredentialsError(
                f"{manifest_path}: format {raw['format']!r} is not supported (expected {MANIFEST_FORMAT})"
            )
        link = raw["superlink"]
        nodes = {
            name: NodeKeys(
                name=name,
                private_key=out_dir / entry["private_key"],
                public_key=out_dir / entry["public_key"],
                fingerprint=str(entry["fingerprint"]),
            )
            for name, entry in raw["nodes"].items()
        }
        creds = FederationCredentials(
            root=out_dir,
            ca_cert=out_dir / raw["ca"]["cert"],
            ca_key=out_dir / raw["ca"]["key"],
            server_cert=out_dir / link["cert"],
            server_key=out_dir / link["key"],
            superexec_secret=out_dir / link["superexec_secret"],
            hostnames=tuple(link["hostnames"]),
            ip_addresses=tuple(link["ip_addresses"]),
            nodes=nodes,
            not_after=dt.datetime.fromisoformat(raw["not_after"]),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CredentialsError(f"{manifest_path}: malformed manifest (field {e})") from None
    required = [creds.ca_cert, creds.server_cert, creds.server_key]
    for keys in nodes.values():
        required += [keys.public_key]
    for path in required:
        if not path.is_file():
            raise CredentialsError(f"{path} is listed in {manifest_path} but missing")
    return creds
