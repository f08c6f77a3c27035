"""The service's logic in plain Python: admin, ingestion and retrieval over the indexed store, and the router to the workers.

Every method blocks (LMDB, numpy, tokenizers), so the gRPC layer calls them off the event loop;
model work goes through the router (`server.router`), to the in-process worker or to remote ones.
Tenant data is written only through `IndexedStore`, which keeps the store and the index in step,
including the KV workers computed on misses that the chunks' KV policy keeps (`server.kv_policy`).
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
from server.kv_admission import AdmissionCounter, SketchShape
from server.kv_policy import KVLedger, MissCause, keeps
from server.offload import Offload
from server.ratelimit import RateLimiter
from server.router import Router, Routing
from server.workers import LocalWorker, RemoteWorker, WorkerHandle
from store.errors import Corrupted, InvalidArgument, NotFound, Unavailable
from store.records import Chunk, DocumentInput, KeyScope, Tenant, TenantSettings, UpsertResult
from store.store import Store
from worker.blend import PrefillMode
from worker.chunker import chunk_text, token_ids
from worker.config import WorkerConfig
from worker.embedder import Embedder
from worker.engine import ComputedKV, Engine
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
        self.default_kv_policy = config.default_kv_policy
        self.admission = AdmissionCounter(SketchShape(window_s=config.kv_admit_window_s))
        self.kv_ledger = KVLedger()
        self._offload = offload
        self.node: WorkerNode | None = None  # the in-process worker, when no remote ones are configured
        tls = config.worker_tls()
        credentials = tls.credentials() if tls else None
        workers: list[WorkerHandle] = [RemoteWorker(address, credentials) for address in config.worker_addresses]
        if not workers:
            engine = Engine(models.llm, config.engine_config())
            self.node = WorkerNode(models.llm, models.embedder, engine)
            workers = [LocalWorker(self.node, offload, self.stored_kv)]
        self.router = Router(workers, Routing(config.routing), kv_sink=self.store_computed_kv)

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
        self.admission.forget(name)
        self.kv_ledger.forget(name)
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
        return self.store.tenant_settings(tenant).kv_codec or self.config.kv_codec

    def kv_policy(self, tenant: str) -> str:
        """When the tenant's chunk KV is stored (`server.kv_policy`): its setting, else the server's default."""
        return self.store.tenant_settings(tenant).kv_policy or self.default_kv_policy

    def commit(self, tenant: str, documents: list[DocumentInput]) -> UpsertResult:
        return self.indexed_store.commit(tenant, documents, self.router.kv_fingerprint)

    # ---- retrieval

    def embed_query(self, text: str, field: str = "query_text") -> np.ndarray:
        """The server embeds text queries itself (a small model): a Search needs no worker."""
        if not text.strip():
            raise InvalidArgument(f"{field}: must not be empty")
        return self.models.embedder.embed([text])[0]

    def generate_job(self, tenant: str, hits: list[Hit], question: str, mode: PrefillMode, max_new_tokens: int) -> tuple[GenerateJob, str]:
        """The work for a worker, and the capability that lets it fetch these chunks' stored KV (and no other).

        A chunk with KV of the workers' model is a hit; any other a miss, marked `keep` where its
        owner's KV policy stores it. A full prefill reads no chunk KV: it counts retrievals, but
        neither hits nor misses.
        """
        fingerprint = self.router.kv_fingerprint
        settings = {owner: self.store.tenant_settings(owner) for owner in {h.chunk.owner for h in hits}}
        uses_kv = mode is not PrefillMode.FULL_PREFILL
        chunks = []
        for hit in hits:
            chunk, owner = hit.chunk, settings[hit.chunk.owner]
            policy = owner.kv_policy or self.default_kv_policy
            retrievals = self.admission.record(chunk.owner, [chunk.chunk_id])[0] if policy == "admit_on_reuse" else 0
            key = self.store.kv_key(chunk.owner, chunk.token_ids, fingerprint).hex()
            cause = _miss_cause(chunk, fingerprint, key)
            if uses_kv:
                self.kv_ledger.count(tenant, cause)
            chunks.append(
                ChunkRef(
                    chunk_id=chunk.chunk_id,
                    kv_key=key if cause is not None else chunk.kv_key,
                    token_ids=chunk.token_ids,
                    stored=cause is None,
                    codec=owner.kv_codec or self.config.kv_codec,
                    keep=uses_kv and cause is not None and keeps(policy, retrievals, owner.kv_admit_after or self.config.kv_admit_after),
                )
            )
        capability = self.capabilities.issue(c.chunk_id for c in chunks if c.stored)
        return GenerateJob(chunks, question, mode, max_new_tokens, tenant), capability

    async def store_computed_kv(self, job: GenerateJob, computed: list[ComputedKV]) -> None:
        """The router's sink, once an answer has ended: count its misses' recompute time, store the
        blobs its chunks' policies keep, and drop the stale KV of misses not kept."""
        for kv in computed:
            self.kv_ledger.recomputed(job.tenant, kv.seconds, kept=bool(kv.blob))
        await self._offload.io(self._store_computed_kv, job.tenant, computed, self.router.kv_fingerprint)

    def _store_computed_kv(self, tenant: str, computed: list[ComputedKV], fingerprint: str) -> None:
        kept = [(kv.chunk_id, kv.blob) for kv in computed if kv.blob]
        if kept:
            attached = self.indexed_store.attach_kv(tenant, kept, fingerprint)
            log.info("tenant %s: stored the KV of %d of %d chunks computed on a miss", tenant, len(attached), len(kept))
        not_kept = [kv.chunk_id for kv in computed if not kv.blob]
        stale = [
            c.chunk_id for c in self.store.readable_chunks(tenant, not_kept)
            if _miss_cause(c, fingerprint, self.store.kv_key(c.owner, c.token_ids, fingerprint).hex()) is MissCause.STALE
        ]
        if stale:
            dropped = self.indexed_store.drop_kv(stale)
            log.info("tenant %s: dropped the KV of %d chunks computed under another model", tenant, len(dropped))

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


def _miss_cause(chunk: Chunk, fingerprint: str, key: str) -> MissCause | None:
    """None when the chunk's stored KV is of the model with `fingerprint` (`key`: the blob key such
    KV has; it decides for chunks stored before fingerprints were recorded), else why it is a miss."""
    if not chunk.has_kv:
        return MissCause.EVICTED if chunk.kv_evicted else MissCause.NEVER_COMPUTED
    current = chunk.kv_fingerprint == fingerprint if chunk.kv_fingerprint is not None else chunk.kv_key == key
    return None if current else MissCause.STALE


def _checked(settings: TenantSettings) -> TenantSettings:
    if settings.kv_codec and settings.kv_codec not in CODECS:
        raise InvalidArgument(f"settings.kv_codec: unknown {settings.kv_codec!r}; known: {sorted(CODECS)} or empty for the default")
    return settings
