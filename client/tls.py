"""Transport security for tenantkv's gRPC channels: API keys and chunk KV cross the network.

A server or worker listens with its certificate and key, and requires client certificates signed
by `client_ca` when given (mutual TLS, for the server's router talking to its workers). Clients
verify the server against a CA bundle. Plaintext stays allowed on loopback addresses only,
unless explicitly asked for (`insecure`).
"""

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


@dataclass(frozen=True, slots=True)
class ServerTLS:
    cert: Path  # PEM certificate chain
    key: Path  # PEM private key
    client_ca: Path | None = None  # PEM bundle: require client certificates it signed

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True, slots=True)
class ClientTLS:
    ca: Path  # PEM bundle the server's certificate must chain to
    cert: Path | None = None  # a client certificate, for servers that require one
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: give a client certificate and its key together")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def is_loopback(address: str) -> bool:
    """Whether host:port names this machine only (127.0.0.0/8, ::1, localhost)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(address: str, insecure: bool) -> None:
    """ValueError for plaintext on an address other machines can reach, unless `insecure` says so."""
    if not insecure and not is_loopback(address):
        raise ValueError(
            f"{address}: refusing plaintext gRPC on a non-loopback address; give a TLS certificate and key, "
            "or --insecure on a network you trust"
        )


def secure_or_plain(address: str, tls: ClientTLS | None, options: list[tuple[str, int]]) -> grpc.Channel:
    """A blocking channel: TLS when `tls` is given, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.credentials(), options=options)
