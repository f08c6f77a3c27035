"""`tenantkv worker`: one inference worker as its own gRPC service, with the standard health service.

It loads the models before it listens (a router sees it down until then), then serves; it pulls the chunk KV it lacks from the store with a
worker key. Stops cleanly on SIGINT or SIGTERM: in-flight calls get a grace period.
"""

import asyncio
import logging
import signal
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from client.api import MAX_MESSAGE_BYTES, Client
from client.tls import ClientTLS, ServerTLS, check_plaintext
from protos.tenantkv.v1 import worker_pb2, worker_pb2_grpc
from worker.config import WorkerConfig
from worker.embedder import Embedder
from worker.engine import Engine, EngineConfig
from worker.llm import load_llm
from worker.node import WorkerNode
from worker.service import WorkerServicer
from worker.store_kv import StoreKV

log = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


@dataclass(frozen=True, slots=True)
class WorkerServiceConfig:
    listen: str  # host:port
    store: str  # the server's host:port, for KVCache.Fetch
    api_key: str  # a worker-scoped key
    models: WorkerConfig = field(default_factory=WorkerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tls: ServerTLS | None = None  # this worker's certificate; with client_ca, the router must present one
    store_tls: ClientTLS | None = None  # how to verify the server when fetching KV
    insecure: bool = False  # plaintext on a non-loopback address


def load_node(config: WorkerConfig, engine: EngineConfig) -> WorkerNode:
    llm = load_llm(config)
    embedder = Embedder(config.embedder_path) if config.embedder_path else Embedder.default()
    return WorkerNode(llm, embedder, Engine(llm, engine))


class WorkerServer:
    def __init__(self, config: WorkerServiceConfig, node: WorkerNode | None = None) -> None:
        self.config = config
        self.node = node
        self._owns_node = node is None  # loaded here, so closed here
        self.port = 0
        self._store = Client(config.store, config.api_key, tls=config.store_tls)
        self._health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._servicer: WorkerServicer | None = None

    async def start(self) -> int:
        """Load the models, then listen and serve; returns the port."""
        if self.node is None:
            self.node = await asyncio.to_thread(load_node, self.config.models, self.config.engine)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._server = grpc.aio.server(options=options)
        self._servicer = WorkerServicer(self.node, StoreKV(self._store).fetcher)
        worker_pb2_grpc.add_WorkerServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if self.config.tls is None:
            check_plaintext(self.config.listen, self.config.insecure)
            self.port = self._server.add_insecure_port(self.config.listen)
        else:
            self.port = self._server.add_secure_port(self.config.listen, self.config.tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot bind {self.config.listen}")
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        await self._server.start()
        log.info("worker serving on port %d, store %s", self.port, self.config.store)
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace_s)
        if self._servicer is not None:
            self._servicer.shutdown()
        if self._owns_node and self.node is not None:
            self.node.close()
        self._store.close()

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)


async def serve(config: WorkerServiceConfig) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = WorkerServer(config)
    try:
        await server.start()
        await stop.wait()
        log.info("stopping")
    finally:
        await server.stop()
