"""TLS between server, clients and workers, with throwaway certificate authorities made by `cryptography`."""

import asyncio
import dataclasses
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.api import Client
from client.tls import ClientTLS, ServerTLS, check_plaintext, is_loopback
from server.app import ServerThread, TenantKVServer
from server.config import ServerConfig
from server.process import free_port
from server.workers import RemoteWorker, WorkerUnavailable
from tests.workers import WorkerThread
from worker.serve import WorkerServiceConfig


@dataclass(frozen=True)
class Authority:
    """A CA's certificate, and one certificate for 127.0.0.1 it signed, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_authority(folder: Path, name: str) -> Authority:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    authority = Authority(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    authority.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    authority.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    authority.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return authority


@pytest.fixture(scope="module")
def authorities(tmp_path_factory) -> tuple[Authority, Authority]:
    folder = tmp_path_factory.mktemp("tls")
    return make_authority(folder / "ours", "ours"), make_authority(folder / "other", "other")


def status_over(address: str, tls: ClientTLS) -> str:
    """The worker's model fingerprint, asked through the router's remote handle over TLS."""

    async def ask() -> str:
        worker = RemoteWorker(address, tls.credentials())
        try:
            return (await worker.status(0)).kv_fingerprint
        finally:
            await worker.close()

    return asyncio.run(ask())


def test_a_worker_over_mutual_tls_admits_only_routers_our_ca_signed(authorities, models) -> None:
    ours, other = authorities
    address = f"127.0.0.1:{free_port()}"
    config = WorkerServiceConfig(listen=address, store="127.0.0.1:1", api_key="unused", tls=ServerTLS(ours.cert, ours.key, client_ca=ours.ca))
    with WorkerThread(config, models) as worker:
        assert status_over(address, ClientTLS(ours.ca, ours.cert, ours.key)) == worker.node.engine.kv_fingerprint
        refused = [
            ClientTLS(other.ca, ours.cert, ours.key),  # the worker's certificate is from a CA we do not trust
            ClientTLS(ours.ca),  # no client certificate
            ClientTLS(ours.ca, other.cert, other.key),  # a client certificate from another CA
        ]
        for tls in refused:
            with pytest.raises(WorkerUnavailable):
                status_over(address, tls)


def test_a_server_on_tls_serves_clients_that_trust_its_ca_only(authorities, server_config: ServerConfig, models) -> None:
    ours, other = authorities
    config = dataclasses.replace(server_config, tls_cert=ours.cert, tls_key=ours.key)
    with ServerThread(config, models) as server:
        admin_key = config.admin_key_path.read_text().strip()
        with Client(server.address, admin_key, tls=ClientTLS(ours.ca)) as admin:
            assert admin.create_tenant("acme").tenant_id == "acme"
        for client in (Client(server.address, admin_key, timeout_s=5, tls=ClientTLS(other.ca)), Client(server.address, admin_key, timeout_s=5)):
            with client, pytest.raises(grpc.RpcError) as err:
                client.get_tenant("acme")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_refused_off_loopback_unless_insecure(server_config: ServerConfig, models) -> None:
    assert is_loopback("127.0.0.1:1") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:1") and not is_loopback("10.0.0.5:1") and not is_loopback("example.com:1")
    check_plaintext("0.0.0.0:50051", insecure=True)
    with pytest.raises(ValueError, match="refusing plaintext"):
        check_plaintext("0.0.0.0:50051", insecure=False)
    with pytest.raises(ValueError, match="refusing plaintext"):
        asyncio.run(TenantKVServer(dataclasses.replace(server_config, host="0.0.0.0"), models).start())
