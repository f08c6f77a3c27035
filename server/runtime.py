"""The service's logic in plain Python: admin, ingestion and retrieval over the indexed store, and the router to the workers.

Every method blocks (LMDB, numpy, tokenizers), so the gRPC layer calls them off the event loop;
model work goes through the router (`server.router`), to the in-process worker or to remote ones.
Tenant data is written only through `IndexedStore`, which keeps the store and the index in step.
"""

import functools
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from kvcodec import CODECS, codec_of
from server.backup import Backups
from server.capability import Capabilities
from server.compactor import Compactor
from server.config import ServerConfig
from server.indexed_store import Hit, IndexedStore
from server.offload import Offload
from server.ratelimit import RateLimiter
from server.router import Router, Routing
from server.workers import LocalWorker, RemoteWorker, WorkerHandle
from store.errors import Corrupted, InvalidArgument, NotFound, Unavailable
from store.kvblobs import blob_key
from store.records import DocumentInput, KeyScope, Tenant, TenantSettings, UpsertResult
from store.store import Store
from worker.blend import PrefillMode
from worker.chunker import chunk_text, token_ids
from worker.config import WorkerConfig
from worker.embedder import Embedder
from worker.engine import Engine
from worker.llm import LLM, load_llm
from worker.node import ChunkRef, GenerateJob, WorkerNode
from worker.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Models:
    """The models one process serves with; loaded once and shared (tests share one per session).

    `llm` is None in a server whose workers run elsewhere: it needs the tokenizer (to chunk) and
    the small embedder (for text queries) only.
    """

    tokenizer: PreTrainedTokenizerBase
    embedder: Embedder
    llm: LLM | None


def load_models(config: WorkerConfig, with_llm: bool = True) -> Models:
    embedder = Embedder(config.embedder_path) if config.embedder_path else Embedder.default()
    if not with_llm:
        return Models(tokenizer=load_tokenizer(config), embedder=embedder, llm=None)
    llm = load_llm(config)
    return Models(tokenizer=llm.tokenizer, embedder=embedder, llm=llm)


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    text: str
    vector: np.ndarray | None  # float32 [dim], or None to embed


@dataclass(frozen=True, slots=True)
class DocumentSpec:
    """One document of an upsert batch, validated for shape but not yet chunked or embedded."""

    external_id: str
    metadata: dict
    text: str
    chunks: list[ChunkSpec]


@dataclass(frozen=True, slots=True)
class CutChunk:
    """A chunk of an upsert batch once cut and tokenised; its vector when the client gave one."""

    text: str
    token_ids: np.ndarray
    vector: np.ndarray | None


class Runtime:
    """Admin, ingestion and retrieval on top of the indexed store, the models and the router."""

    def __init__(self, config: ServerConfig, store: Store, models: Models, offload: Offload) -> None:
        self.config = config
        self.store = store
        self.indexed_store = IndexedStore(store)
        self.models = models
        self.rate_limiter = RateLimiter()
        self.stopping = threading.Event()  # set at shutdown: model work ends at its next chunk or token
        self.compactor = Compactor(store, self.stopping)
        back_up = functools.partial(store.backup, max_bytes_per_s=config.backup_max_mb_per_s << 20)
        self.backups = Backups(config.backup_root, back_up, self.compactor.lock)
        self.capabilities = Capabilities()
        self.node: WorkerNode | None = None  # the in-process worker, when no remote ones are configured
        tls = config.worker_tls()
        credentials = tls.credentials() if tls else None
        workers: list[WorkerHandle] = [RemoteWorker(address, credentials) for address in config.worker_addresses]
        if not workers:
            engine = Engine(models.llm, config.engine_config())
            self.node = WorkerNode(models.llm, models.embedder, engine)
            workers = [LocalWorker(self.node, offload, self.stored_kv)]
        self.router = Router(workers, Routing(config.routing))

    @classmethod
    def open(cls, config: ServerConfig, offload: Offload, models: Models | None = None) -> "Runtime":
        """Open the store, rebuild the index and load the models; the caller starts `router` (async)."""
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.store_config())
        models = models or load_models(config.worker_config(), with_llm=not config.worker_addresses)
        runtime = cls(config, store, models, offload)
        runtime.indexed_store.rebuild_index()
        return runtime

    def stop_model_work(self) -> None:
        """At shutdown: answers and ingestion end at the model's next step with UNAVAILABLE (the
        in-process worker's scheduler stops; model work of later steps is refused)."""
        self.stopping.set()
        if self.node is not None:
            self.node.close()

    def close(self) -> None:
        if self.node is not None:
            self.node.close()
        self.compactor.join()
        with self.compactor.lock:  # never closed under a running backup
            self.store.close()

    def ensure_admin_key(self) -> str | None:
        """Create an admin key on first start and write it to a file only its owner can read."""
        path = self.config.admin_key_path
        if path.exists():
            return None
        _, token = self.store.create_api_key(KeyScope.ADMIN, None, frozenset({"read", "write"}))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        log.info("admin key written to %s", path)
        return token

    # ---- tenants

    def admit(self, tenant: str) -> None:
        """Count one data-plane call against the tenant's request rate; QuotaExceeded above it."""
        self.rate_limiter.acquire(tenant, self.store.tenant_settings(tenant).requests_per_second)

    def create_tenant(self, name: str, settings: TenantSettings) -> Tenant:
        return self.indexed_store.create_tenant(name, _checked(settings))

    def update_tenant(self, name: str, settings: TenantSettings) -> Tenant:
        return self.indexed_store.update_tenant(name, _checked(settings))

    def delete_tenant(self, name: str) -> int:
        deleted = self.indexed_store.delete_tenant(name)
        self.rate_limiter.forget(name)
        self.compactor.compact_in_background()
        return deleted

    # ---- ingestion

    def cut(self, documents: list[DocumentSpec], cancelled: threading.Event) -> list[list[CutChunk]]:
        """Each document's chunks with their token ids: its text cut by the chunker, or the chunks given.

        Between documents it stops with Unavailable once `cancelled` is set (the caller went away)
        or the server is stopping: a large batch is seconds of tokenising.
        """
        tokenizer = self.models.tokenizer
        given = iter(token_ids(tokenizer, [c.text for doc in documents if not doc.text for c in doc.chunks]))
        cut = []
        for doc in documents:
            if self.stopping.is_set():
                raise Unavailable("the server is shutting down; retry the batch")
            if cancelled.is_set():
                raise Unavailable("the call was cancelled")
            if doc.text:
                cut.append([CutChunk(c.text, c.token_ids, None) for c in chunk_text(doc.text, tokenizer, self.config.chunk_tokens)])
            else:
                cut.append([CutChunk(c.text, next(given), c.vector) for c in doc.chunks])
        return cut

    def kv_codec(self, tenant: str) -> str:
        """The codec the tenant's chunk KV is stored in ("": the server's default)."""
        return self.store.get_tenant(tenant).settings.kv_codec or self.config.kv_codec

    def commit(self, tenant: str, documents: list[DocumentInput]) -> UpsertResult:
        return self.indexed_store.commit(tenant, documents, self.router.kv_fingerprint)

    # ---- retrieval

    def embed_query(self, text: str, field: str = "query_text") -> np.ndarray:
        """The server embeds text queries itself (a small model): a Search needs no worker."""
        if not text.strip():
            raise InvalidArgument(f"{field}: must not be empty")
        return self.models.embedder.embed([text])[0]

    def generate_job(self, tenant: str, hits: list[Hit], question: str, mode: PrefillMode, max_new_tokens: int) -> tuple[GenerateJob, str]:
        """The work for a worker, and the capability that lets it fetch these chunks' stored KV (and no other)."""
        fingerprint = self.router.kv_fingerprint
        chunks = [
            ChunkRef(
                chunk_id=h.chunk.chunk_id,
                kv_key=h.chunk.kv_key or blob_key(fingerprint, h.chunk.token_ids, h.chunk.owner).hex(),
                token_ids=h.chunk.token_ids,
                stored=h.chunk.has_kv,
            )
            for h in hits
        ]
        capability = self.capabilities.issue(c.chunk_id for c in chunks if c.stored)
        return GenerateJob(chunks, question, mode, max_new_tokens, tenant), capability

    def stored_kv(self, chunk_ids: list[int]) -> dict[int, bytes]:
        """The chunks' stored KV blobs for a worker; one failing its checksum is left out (the worker recomputes it)."""
        blobs = {}
        for chunk_id in chunk_ids:
            try:
                blob = self.store.read_kv(chunk_id)
            except Corrupted as exc:
                log.warning("chunk %d: stored KV unusable (%s); recomputing it", chunk_id, exc)
                continue
            if blob is not None:
                blobs[chunk_id] = blob
        return blobs

    def kv_chunk_ids(self, tenant: str, chunk_ids: list[int]) -> list[int]:
        """The requested chunks that have KV, in request order; NotFound for any the tenant may not read."""
        readable = {c.chunk_id: c for c in self.store.readable_chunks(tenant, chunk_ids, with_tokens=False)}
        for chunk_id in chunk_ids:
            if chunk_id not in readable:
                raise NotFound(f"chunk_ids: chunk {chunk_id} not found")
        return [chunk_id for chunk_id in chunk_ids if readable[chunk_id].has_kv]

    def read_kv(self, chunk_id: int) -> tuple[str, bytes] | None:
        """A chunk's encoded KV blob and the codec its header names; None if it has none (any more)."""
        blob = self.store.read_kv(chunk_id)
        return None if blob is None else (codec_of(blob), blob)


def _checked(settings: TenantSettings) -> TenantSettings:
    if settings.kv_codec and settings.kv_codec not in CODECS:
        raise InvalidArgument(f"settings.kv_codec: unknown {settings.kv_codec!r}; known: {sorted(CODECS)} or empty for the default")
    return settings
