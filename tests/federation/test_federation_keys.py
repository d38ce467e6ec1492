"""``edge-node federation-keys`` (edge_runtime/federation/keys.py): the CA, the SuperLink's TLS certificate and
the SuperNode key pairs of a deployment without ``--insecure``; fast, no Flower processes."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store

from edge_runtime.cli.main import main
from edge_runtime.federation.keys import DeploymentKeys, KeysError, generate, parse_hosts, parse_nodes

HOSTS = ["superlink.example.org", "10.1.2.3"]
NODES = ["box0", "box1"]


@pytest.fixture()
def keys(tmp_path: Path) -> DeploymentKeys:
    return generate(tmp_path / "keys", parse_hosts(HOSTS), parse_nodes(NODES))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_chains_to_the_ca_for_every_host_and_loopback(keys):
    ca, server = _cert(keys.ca_cert), _cert(keys.server_cert)
    server.verify_directly_issued_by(ca)
    assert keys.superlink_ca_cert.read_bytes() == keys.ca_cert.read_bytes()
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"superlink.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(h) for h in ("10.1.2.3", "127.0.0.1", "::1")}
    # the full path validation a TLS client does (trust anchor, CA constraints, EKU, SAN match)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("superlink.example.org"))
    chain = verifier.verify(server, [])
    assert chain[-1] == ca
    PolicyBuilder().store(Store([ca])).build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1"))).verify(server, [])
    with pytest.raises(Exception):
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("other.example.org")).verify(server, [])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(keys.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_a_tls_client_trusting_the_ca_completes_a_handshake_on_loopback(keys):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(keys.server_cert, keys.server_key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = ssl.create_default_context(cafile=str(keys.node("box0").ca_cert))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(2) == b"ok"
        thread.join(30)


def test_supernode_keys_are_openssh_ecdsa_pairs_and_the_superlink_holds_the_public_halves(keys):
    publics = set()
    for name in NODES:
        node = keys.node(name)
        private = serialization.load_ssh_private_key(node.private_key.read_bytes(), None)
        public = serialization.load_ssh_public_key(node.public_key.read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
        assert private.public_key().public_numbers() == public.public_numbers()
        assert keys.registered_key(name).read_bytes() == node.public_key.read_bytes()
        assert node.ca_cert.read_bytes() == keys.ca_cert.read_bytes()
        publics.add(node.public_key.read_bytes())
    assert len(publics) == len(NODES)
    assert keys.node_names() == NODES


def test_private_keys_are_owner_only(keys):
    for path in [keys.ca_key, keys.server_key, *(keys.node(n).private_key for n in NODES)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
    for path in [keys.ca_cert, keys.server_cert, *(keys.node(n).public_key for n in NODES)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_existing_keys_are_not_overwritten_without_force(keys):
    before = {p: p.read_bytes() for p in keys.root.rglob("*") if p.is_file()}
    with pytest.raises(KeysError, match="--force"):
        generate(keys.root, parse_hosts([]), parse_nodes(["box1"]))
    assert {p: p.read_bytes() for p in keys.root.rglob("*") if p.is_file()} == before
    generate(keys.root, parse_hosts([]), parse_nodes(NODES), force=True)
    assert keys.ca_cert.read_bytes() != before[keys.ca_cert]
    assert keys.node("box0").private_key.read_bytes() != before[keys.node("box0").private_key]
    assert stat.S_IMODE(keys.server_key.stat().st_mode) == 0o600


def test_the_command_writes_the_layout_and_names_the_bad_option(tmp_path, capsys):
    out = tmp_path / "fed-keys"
    assert main(["federation-keys", "--out", str(out), "--hosts", "10.0.0.5", "--nodes", "box0,box1"]) == 0
    assert "copy" in capsys.readouterr().out
    assert DeploymentKeys(out).node_names() == ["box0", "box1"]
    assert main(["federation-keys", "--out", str(out), "--nodes", "box0"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["federation-keys", "--out", str(tmp_path / "x"), "--nodes", "box0,box0"]) == 2
    assert "--nodes 'box0'" in capsys.readouterr().err
    assert main(["federation-keys", "--out", str(tmp_path / "x"), "--nodes", "../up"]) == 2
    assert "--nodes '../up'" in capsys.readouterr().err
    assert main(["federation-keys", "--out", str(tmp_path / "x"), "--nodes", "a", "--hosts", "bad host"]) == 2
    assert "--hosts 'bad host'" in capsys.readouterr().err
    assert main(["federation-keys", "--out", str(tmp_path / "x"), "--nodes", "a", "--days", "0"]) == 2
    assert "--days" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_hosts_are_normalised_and_loopback_always_added():
    assert parse_hosts(["Superlink.Example.org.,10.0.0.5", "[::1]", "10.0.0.5"]) == [
        "superlink.example.org", "10.0.0.5", "::1", "localhost", "127.0.0.1"]
    assert parse_hosts([]) == ["localhost", "127.0.0.1", "::1"]
