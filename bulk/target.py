"""The server a bulk job writes to, as Ray tasks and actors receive it (picklable, opened where used)."""

from dataclasses import dataclass
from pathlib import Path

from client.api import Client
from client.tls import ClientTLS


@dataclass(frozen=True, slots=True)
class ServerTarget:
    address: str  # HOST:PORT
    api_key: str  # the tenant's key: the job's tenant comes from it, as for every data-plane call
    ca: Path | None = None  # the CA bundle of a server on TLS; None: plaintext

    def client(self) -> Client:
        return Client(self.address, self.api_key, tls=ClientTLS(self.ca) if self.ca else None)
