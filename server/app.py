"""The gRPC server: services, auth interceptor, health and reflection, and a clean stop.

The server listens at once with health NOT_SERVING, loads the store, index and models, warms up
what compiles on first use (unless `warm_up` is off), then turns SERVING; calls before that are
UNAVAILABLE. `ServerThread` runs one in a background thread for the demo and the tests.
"""

import asyncio
import gc
import logging
import signal
import threading
from concurrent.futures import Future

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from protos.tenantkv.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    kv_cache_pb2,
    kv_cache_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tenant_admin_pb2,
    tenant_admin_pb2_grpc,
)
from client.tls import check_plaintext
from server.config import ServerConfig
from server.interceptor import AuthInterceptor
from server.metrics import Metrics
from server.offload import Offload
from server.runtime import Models, Runtime
from server.services import IngestServicer, KVCacheServicer, RetrievalServicer, TenantAdminServicer
from server.warmup import warm_up
from store.errors import Unavailable
from store.records import ApiKey

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in [
        (tenant_admin_pb2, "TenantAdmin"),
        (ingest_pb2, "Ingest"),
        (retrieval_pb2, "Retrieval"),
        (kv_cache_pb2, "KVCache"),
    ]
]


class TenantKVServer:
    def __init__(self, config: ServerConfig, models: Models | None = None) -> None:
        self.config = config
        self.runtime: Runtime | None = None
        self.port = 0
        self._models = models
        self._offload = Offload()
        self._health: HealthServicer | None = None
        self._server: grpc.aio.Server | None = None
        self.metrics = Metrics(lambda: self.runtime)
        self.metrics_port: int | None = None

    def _build(self) -> grpc.aio.Server:
        """The grpc.aio server with every service; built on the loop that will run it."""
        options = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
        ]
        server = grpc.aio.server(interceptors=[AuthInterceptor(self._authenticate, self.metrics)], options=options)
        source = lambda: self.runtime  # noqa: E731 - servicers see the runtime once it is loaded
        tenant_admin_pb2_grpc.add_TenantAdminServicer_to_server(TenantAdminServicer(source, self._offload), server)
        ingest_pb2_grpc.add_IngestServicer_to_server(IngestServicer(source, self._offload), server)
        retrieval_pb2_grpc.add_RetrievalServicer_to_server(RetrievalServicer(source, self._offload), server)
        kv_cache_pb2_grpc.add_KVCacheServicer_to_server(KVCacheServicer(source, self._offload), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([*SERVICE_NAMES, "grpc.health.v1.Health", reflection.SERVICE_NAME], server)
        return server

    async def start(self) -> int:
        """Listen (NOT_SERVING) and return the bound port; `load()` makes it SERVING."""
        self._health = HealthServicer()
        self._server = self._build()
        tls = self.config.server_tls()
        if tls is None:
            check_plaintext(self.config.address, self.config.insecure)
            self.port = self._server.add_insecure_port(self.config.address)
        else:
            self.port = self._server.add_secure_port(self.config.address, tls.credentials())
        if self.port == 0:
            raise OSError(f"cannot bind {self.config.address}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        log.info("listening on %s:%d", self.config.host, self.port)
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.config.host, self.metrics_port)
        return self.port

    async def load(self) -> None:
        runtime = await asyncio.to_thread(Runtime.open, self.config, self._offload, self._models)
        await runtime.router.start()
        self.runtime = runtime
        await asyncio.to_thread(self.runtime.ensure_admin_key)
        if self.config.warm_up:
            await asyncio.to_thread(warm_up, self.runtime)
        gc.freeze()  # the models, store and index live as long as the server: full collections need not scan them
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls; in-flight model work ends with UNAVAILABLE at its next chunk or token,
        other calls get `grace_s` to finish."""
        if self.runtime is not None:
            await asyncio.to_thread(self.runtime.stop_model_work)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)
        self.metrics.close()
        self._offload.shutdown()
        if self.runtime is not None:
            await self.runtime.router.stop()
            self.runtime.close()
            self.runtime = None
        gc.unfreeze()  # frozen objects are never freed: at exit nanobind would report triton's (imported by torch) as leaked

    def _authenticate(self, token: str) -> ApiKey:
        """The key behind `token`; a tenant key's call also counts against its tenant's request rate."""
        if self.runtime is None:
            raise Unavailable("the server is still loading its store, index and models")
        key = self.runtime.store.authenticate(token)
        if key.tenant is not None:
            self.runtime.admit(key.tenant)
        return key

    async def _set_health(self, status: int) -> None:
        for name in ["", *SERVICE_NAMES]:
            await self._health.set(name, status)


async def serve(config: ServerConfig) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly: in-flight calls get a grace period."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = TenantKVServer(config)
    await server.start()
    try:
        await server.load()
        await stop.wait()
        log.info("stopping")
    finally:
        await server.stop()


class ServerThread:
    """A server on its own event loop in a background thread: start() returns once it is SERVING."""

    def __init__(self, config: ServerConfig, models: Models | None = None) -> None:
        self.server = TenantKVServer(config, models)
        self._loop = uvloop.new_event_loop()  # the loop `serve` runs on, so tests exercise it
        self._thread = threading.Thread(target=self._loop.run_forever, name="tenantkv-server", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.server.config.host}:{self.server.port}"

    def start(self) -> "ServerThread":
        self._thread.start()
        self._call(self.server.start())
        self._call(self.server.load())
        return self

    def stop(self) -> None:
        self._call(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, coroutine) -> object:
        future: Future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
