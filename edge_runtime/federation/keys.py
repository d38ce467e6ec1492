"""Everything a Flower 1.42 deployment without ``--insecure`` needs (``edge-node federation-keys``).

One call writes, under ``out``::

    ca/ca.crt, ca/ca.key                  the certificate authority (ca.key signs; it is copied nowhere)
    superlink/ca.crt                      for --ssl-ca-certfile (the SuperLink's own ServerApp checks with it)
    superlink/server.crt, server.key      for --ssl-certfile / --ssl-keyfile; SAN: the given hosts + localhost, 127.0.0.1, ::1
    superlink/supernodes/<name>.pub       the public key of each SuperNode, for ``flwr supernode register``
    nodes/<name>/ca.crt                   for the SuperNode's --root-certificates
    nodes/<name>/supernode.key            for --auth-supernode-private-key (OpenSSH, ECDSA P-384)
    nodes/<name>/supernode.pub            the same public key as superlink/supernodes/<name>.pub

So ``superlink/`` goes to the SuperLink's machine and ``nodes/<name>/`` to edge box ``<name>``.
Private keys are written 0600 and their folders 0700; nothing is overwritten unless ``force``.

Made with the ``cryptography`` package only. The loopback names are always in the server
certificate: the SuperLink starts its ServerApp against ``127.0.0.1:<port>`` with TLS (Flower's
``resolve_bind_address`` maps a ``--host 0.0.0.0`` to 127.0.0.1), and that connection checks the SAN.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOST_NAME = re.compile(r"^(?=.{1,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$")


class KeysError(ValueError):
    """A bad option or a file that would be overwritten; the message names it (``edge-node`` exits 2)."""


@dataclass(frozen=True)
class NodeKeys:
    """What edge box ``name`` needs: the CA certificate and its SuperNode key pair."""

    name: str
    ca_cert: Path
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class DeploymentKeys:
    """The paths of one ``federation-keys`` folder (see the module docstring for the layout)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def superlink_dir(self) -> Path:
        return self.root / "superlink"

    @property
    def server_cert(self) -> Path:
        return self.superlink_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.superlink_dir / "server.key"

    @property
    def superlink_ca_cert(self) -> Path:
        return self.superlink_dir / "ca.crt"

    def registered_key(self, name: str) -> Path:
        """The SuperLink's copy of node ``name``'s public key (what ``flwr supernode register`` reads)."""
        return self.superlink_dir / "supernodes" / f"{name}.pub"

    def node(self, name: str) -> NodeKeys:
        folder = self.root / "nodes" / name
        return NodeKeys(name, folder / "ca.crt", folder / "supernode.key", folder / "supernode.pub")

    def node_names(self) -> list[str]:
        """The nodes that have a folder under ``nodes/``, sorted."""
        folder = self.root / "nodes"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def parse_hosts(hosts: list[str]) -> list[str]:
    """``hosts`` (each maybe comma-separated) checked as IP addresses or DNS names, plus the loopback names;
    KeysError naming ``--hosts`` for a bad one."""
    out: list[str] = []
    for item in (h.strip() for chunk in hosts for h in chunk.split(",")):
        if not item:
            continue
        try:
            item = str(ipaddress.ip_address(item.strip("[]")))
        except ValueError:
            if not HOST_NAME.match(item):
                raise KeysError(f"--hosts {item!r}: not an IP address or a DNS name") from None
            item = item.rstrip(".").lower()
        if item not in out:
            out.append(item)
    return out + [h for h in LOOPBACK_HOSTS if h not in out]


def parse_nodes(nodes: list[str]) -> list[str]:
    """``nodes`` (each maybe comma-separated) checked as folder-safe, unique names; KeysError naming ``--nodes``."""
    out: list[str] = []
    for name in (n.strip() for chunk in nodes for n in chunk.split(",")):
        if not name:
            continue
        if not NODE_NAME.match(name):
            raise KeysError(f"--nodes {name!r}: a node name is 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if name in out:
            raise KeysError(f"--nodes {name!r}: named twice")
        out.append(name)
    if not out:
        raise KeysError("--nodes: name at least one edge node, e.g. --nodes box0,box1")
    return out


def _pem_key(key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-runtime federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    public = key.public_key()
    cert = (x509.CertificateBuilder()
            .subject_name(_name("edge-runtime federation CA")).issuer_name(_name("edge-runtime federation CA"))
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA384()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str],
                     days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's TLS certificate for ``hosts`` (IP SANs for addresses, DNS SANs for names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA384()))
    return key, cert


def make_node_key() -> tuple[bytes, bytes]:
    """(private key in OpenSSH PEM, public key in OpenSSH one-line form) of a SuperNode: ECDSA P-384, what
    ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` load."""
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return _pem_key(key, serialization.PrivateFormat.OpenSSH), public + b"\n"


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write ``data`` to ``path`` (created 0600 when ``private``, else 0644; never group/world-writable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a file of another owner or mode is replaced, not written through
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)  # the umask may have taken bits away from 0644


def generate(out: Path, hosts: list[str], nodes: list[str], days: int = 825, force: bool = False) -> DeploymentKeys:
    """Write a deployment's CA, SuperLink certificate and SuperNode keys under ``out`` (module docstring).

    ``hosts`` and ``nodes`` as :func:`parse_hosts` / :func:`parse_nodes` return them. KeysError, before anything
    is written, when a file exists and not ``force``, or ``days`` is out of 1-3650."""
    if not 1 <= days <= 3650:
        raise KeysError(f"--days {days}: the certificates' validity is 1-3650 days")
    keys = DeploymentKeys(Path(out))
    targets = [keys.ca_cert, keys.ca_key, keys.superlink_ca_cert, keys.server_cert, keys.server_key]
    for name in nodes:
        node = keys.node(name)
        targets += [keys.registered_key(name), node.ca_cert, node.private_key, node.public_key]
    existing = [p for p in targets if p.exists() or p.is_symlink()]
    if existing and not force:
        raise KeysError(f"--out {out}: {existing[0]} exists ({len(existing)} file(s) would be overwritten); "
                        "give another folder, or --force to replace them")
    for folder in (keys.root / "ca", keys.superlink_dir, *(keys.node(n).private_key.parent for n in nodes)):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # each holds a private key
    ca_key, ca_cert = make_ca(days=max(days, 3650))
    server_key, server_cert = make_server_cert(ca_key, ca_cert, hosts, days)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(keys.ca_key, _pem_key(ca_key, serialization.PrivateFormat.PKCS8), private=True)
    _write(keys.ca_cert, ca_pem, private=False)
    _write(keys.superlink_ca_cert, ca_pem, private=False)
    _write(keys.server_key, _pem_key(server_key, serialization.PrivateFormat.PKCS8), private=True)
    _write(keys.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    for name in nodes:
        node = keys.node(name)
        private, public = make_node_key()
        _write(node.private_key, private, private=True)
        _write(node.public_key, public, private=False)
        _write(node.ca_cert, ca_pem, private=False)
        _write(keys.registered_key(name), public, private=False)
    return keys
