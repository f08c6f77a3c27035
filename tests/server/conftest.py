"""Fixtures for service tests: two tenants with keys, and small documents with known vectors."""

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from client.api import Client, DocumentText
from server.config import ServerConfig
from server.offload import Offload
from server.runtime import Models, Runtime

DIM = 384


@dataclass
class TenantHandle:
    tenant_id: str
    key_id: str
    client: Client


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def vector_documents(prefix: str, vectors: np.ndarray) -> list[DocumentText]:
    """One single-chunk document per vector, ids `<prefix>-<i>`."""
    return [
        DocumentText(external_id=f"{prefix}-{i}", chunks=[f"{prefix} passage number {i}."], vectors=[v], metadata={"i": i})
        for i, v in enumerate(vectors)
    ]


def open_runtime(config: ServerConfig, models: Models) -> Runtime:
    """A runtime used in-process, without gRPC: its router has polled its in-process worker once."""
    runtime = Runtime.open(config, Offload(), models)
    asyncio.run(runtime.router.poll())
    return runtime


@pytest.fixture
def make_tenant(server, admin):
    opened: list[Client] = []

    def make(tenant_id: str, rights: tuple[str, ...] = ()) -> TenantHandle:
        admin.create_tenant(tenant_id)
        reply = admin.create_api_key(tenant_id, rights)
        client = Client(server.address, reply.api_key)
        opened.append(client)
        return TenantHandle(tenant_id, reply.key_id, client)

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def alice(make_tenant) -> TenantHandle:
    return make_tenant("alice")


@pytest.fixture
def bob(make_tenant) -> TenantHandle:
    return make_tenant("bob")
