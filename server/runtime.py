"""The service's logic in plain Python: store, index and models wired together.

Every method blocks (LMDB, numpy, torch), so the gRPC layer calls them off the event loop.
The store is the source of truth; the index is derived from it at start and updated after
each commit, so a crash between the two leaves nothing the next start does not rebuild.
"""

import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from index.curator import CuratorIndex
from index.tree import sample_rows
from kvcodec import CODECS, codec_of
from server.config import ServerConfig
from server.ratelimit import RateLimiter
from store.compaction import Compaction
from store.errors import Corrupted, InvalidArgument, NotFound, Unavailable
from store.records import Chunk, ChunkInput, DocumentInput, KeyScope, Tenant, TenantSettings, UpsertResult
from store.store import Store
from store.vectors import safe_rows, unit_rows
from worker.chunker import chunk_text, token_ids
from worker.config import WorkerConfig
from worker.embedder import Embedder
from worker.blend import PrefillMode
from worker.engine import Engine, EngineConfig, RetrievedChunk
from worker.generate import GeneratedToken
from worker.llm import LLM, load_llm

log = logging.getLogger(__name__)

MIN_TRAIN_VECTORS = 2048  # below this every tenant is scanned exactly: no tree needed
TRAIN_SAMPLE = 50_000
RETRAIN_GROWTH = 4
CANCEL_CHECK_TEXTS = 16  # texts embedded between two checks for cancellation or shutdown


@dataclass(frozen=True, slots=True)
class Models:
    """The models one process serves with; loaded once and shared (tests share one per session)."""

    llm: LLM
    embedder: Embedder


def load_models(config: WorkerConfig) -> Models:
    embedder_path = config.embedder_path
    return Models(llm=load_llm(config), embedder=Embedder(embedder_path) if embedder_path else Embedder.default())


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


@dataclass(slots=True)  # a hot record, like Chunk
class Hit:
    chunk: Chunk
    score: float


class Runtime:
    def __init__(self, config: ServerConfig, store: Store, models: Models) -> None:
        self.config = config
        self.store = store
        self.models = models
        self.engine = Engine(models.llm, EngineConfig(kv_codec=config.kv_codec, cache_bytes=config.kv_cache_bytes))
        self.index = CuratorIndex(store.dim)
        self._trained_at = 0  # index size when its tree was last trained
        self.training_failures = 0  # trainings that raised: the index kept its previous tree
        self.zeroed_vectors = 0  # stored vectors found unusable at the last rebuild, indexed as zeros
        # Held across a store write and the index update that follows it, so a rebuild that reads
        # the store never races a commit; searches hold it only for the index lookup.
        self._index_lock = threading.RLock()
        self._numbers: dict[str, int] = {}
        self.rate_limiter = RateLimiter()
        self.stopping = threading.Event()  # set at shutdown: model work ends at its next chunk or token
        self._compaction_lock = threading.RLock()  # one compaction at a time
        self._queue_lock = threading.Lock()  # guards the two below
        self._compaction_queued = False  # a background compaction is waiting for its turn
        self._compactor: threading.Thread | None = None  # the newest background compaction

    @classmethod
    def open(cls, config: ServerConfig, models: Models | None = None) -> "Runtime":
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.store_config())
        runtime = cls(config, store, models or load_models(config.worker_config()))
        runtime.rebuild_index()
        return runtime

    def close(self) -> None:
        if self._compactor is not None:
            self._compactor.join()  # its thread ends after any compaction queued before it
        self.store.close()

    # ---- start-up

    def rebuild_index(self) -> None:
        """A fresh index from the store: its tree trained on a sample of the stored vectors.

        Stored vectors are not trusted: each is scaled to unit norm again, or indexed as zeros
        where it cannot be, so no stored data can stop the server from starting.
        """
        with self._index_lock:
            batches, self.zeroed_vectors = [], 0
            for b in tqdm(self.store.iter_index_entries(), desc="index", unit="batch", disable=None):
                vectors, zeroed = safe_rows(b.vectors)  # each batch as read, so the raw copy is not kept
                batches.append((b.ids, vectors, b.readers))
                self.zeroed_vectors += zeroed
            if self.zeroed_vectors:
                log.warning("index rebuild: %d stored vectors are zero or not finite; indexed as zeros", self.zeroed_vectors)
            total = sum(len(ids) for ids, _, _ in batches)
            index = CuratorIndex(self.store.dim)
            if total >= MIN_TRAIN_VECTORS:
                vectors = np.concatenate([v for _, v, _ in batches])
                self._train_safely(lambda: index.train(vectors[sample_rows(total, TRAIN_SAMPLE)]))
            for ids, vectors, readers in batches:
                _add_entries(index, ids, vectors, readers)
            index.build()
            self.index = index
            self._trained_at = total
        log.info("index rebuilt from the store: %d chunks, tree of %d nodes", total, len(index.tree.centroids))

    def _retrain_if_grown(self) -> None:
        """Retrain the tree each time the index has grown RETRAIN_GROWTH-fold (amortised O(1) a vector).

        The index retrains in place from the vectors it holds: rebuilding it from the store
        re-read and re-added every chunk, ~14% of the server's GIL time while 100,000 vectors
        were ingested (py-spy).
        """
        size = len(self.index)
        if size >= MIN_TRAIN_VECTORS and size >= RETRAIN_GROWTH * self._trained_at:
            started = time.perf_counter()
            self._train_safely(lambda: self.index.retrain(TRAIN_SAMPLE))
            self._trained_at = size
            seconds = time.perf_counter() - started
            log.info("index retrained at %d chunks in %.2f s: tree of %d nodes", size, seconds, len(self.index.tree.centroids))

    def _train_safely(self, train: Callable[[], None]) -> None:
        """Run a training; one that fails leaves the index on its previous tree (slower, never down).

        The tree only ever sees rows proven safe for k-means (`ClusterTree.train`), since faiss
        aborts the process from C++ on overflowing values; a Python error is caught here.
        """
        try:
            train()
        except (ValueError, RuntimeError) as exc:
            self.training_failures += 1
            log.error("index training failed (%s); the index keeps its previous tree", exc)

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

    def tenant_number(self, name: str) -> int:
        number = self._numbers.get(name)
        if number is None:
            number = self._numbers[name] = self.store.get_tenant(name).number
        return number

    def admit(self, tenant: str) -> None:
        """Count one data-plane call against the tenant's request rate; QuotaExceeded above it."""
        self.rate_limiter.acquire(tenant, self.store.tenant_settings(tenant).requests_per_second)

    def create_tenant(self, name: str, settings: TenantSettings) -> Tenant:
        return self.store.create_tenant(name, _checked(settings))

    def update_tenant(self, name: str, settings: TenantSettings) -> Tenant:
        return self.store.update_tenant(name, _checked(settings))

    def delete_tenant(self, name: str) -> int:
        number = self.tenant_number(name)
        with self._index_lock:
            deletion = self.store.delete_tenant(name)
            self._numbers.pop(name, None)
            self.rate_limiter.forget(name)
            self.index.remove(deletion.removed_chunk_ids)
            for chunk_id, _ in deletion.revoked:
                self.index.revoke(np.array([chunk_id], dtype=np.int64), number)
        self.compact_in_background()
        return len(deletion.removed_chunk_ids)

    # ---- compaction

    def compact(self) -> Compaction:
        """Rewrite the store's files with live data only, so what was deleted cannot be read back
        from disk; writes wait meanwhile, reads go on."""
        with self._compaction_lock:
            report = self.store.compact()
        log.info(
            "store compacted in %.2f s: %d -> %d bytes (LMDB %d -> %d, KV segments %d -> %d)",
            report.seconds, report.bytes_before, report.bytes_after, report.lmdb_bytes_before,
            report.lmdb_bytes_after, report.segment_bytes_before, report.segment_bytes_after,
        )
        return report

    def compact_in_background(self) -> None:
        """Compact soon in a thread of its own (a tenant's deletion returns without waiting for it);
        requests that come while one waits its turn are served by that one."""
        with self._queue_lock:
            if self._compaction_queued:
                return
            self._compaction_queued = True
            self._compactor = threading.Thread(target=self._compact_queued, name="compaction", daemon=True)
            self._compactor.start()

    def _compact_queued(self) -> None:
        with self._compaction_lock:
            with self._queue_lock:
                self._compaction_queued = False
            if self.stopping.is_set():
                return
            try:
                self.compact()
            except Exception:  # noqa: BLE001 - the thread's end: log it; the next deletion or CompactStore retries
                log.exception("background compaction failed; deleted data stays on disk until the next one")

    def grant(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        return self._change_grants(owner, external_ids, grantee, grant=True)

    def revoke(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        return self._change_grants(owner, external_ids, grantee, grant=False)

    def _change_grants(self, owner: str, external_ids: list[str], grantee: str, grant: bool) -> np.ndarray:
        """Grant or revoke in the store, then mirror the chunks it changed in the index."""
        grantee_number = self.tenant_number(grantee)
        with self._index_lock:
            ids = (self.store.grant if grant else self.store.revoke)(owner, external_ids, grantee)
            (self.index.grant if grant else self.index.revoke)(ids, grantee_number)
        return ids

    # ---- ingestion

    def prepare(self, tenant: str, documents: list[DocumentSpec], cancelled: threading.Event | None = None) -> list[DocumentInput]:
        """Chunk, embed and precompute KV (in the tenant's codec) for a batch (model work); nothing is written.

        Between embedding batches and between chunks' KV it stops with Unavailable once `cancelled`
        is set (the caller went away) or the server is stopping, so abandoned work does not run on.
        """
        def go_on() -> None:
            if self.stopping.is_set():
                raise Unavailable("the server is shutting down; retry the batch")
            if cancelled is not None and cancelled.is_set():
                raise Unavailable("the call was cancelled")

        codec = self.store.get_tenant(tenant).settings.kv_codec
        tokenizer = self.models.llm.tokenizer
        given = iter(token_ids(tokenizer, [c.text for doc in documents if not doc.text for c in doc.chunks]))
        pieces: list[list[tuple[str, np.ndarray, np.ndarray | None]]] = []
        for doc in documents:
            if doc.text:
                go_on()
                cut = chunk_text(doc.text, tokenizer, self.config.chunk_tokens)
                pieces.append([(c.text, c.token_ids, None) for c in cut])
            else:
                pieces.append([(c.text, next(given), c.vector) for c in doc.chunks])
        to_embed = [text for doc in pieces for text, _, vector in doc if vector is None]
        embedded_batches = []
        for start in range(0, len(to_embed), CANCEL_CHECK_TEXTS):
            go_on()
            embedded_batches.append(self.models.embedder.embed(to_embed[start : start + CANCEL_CHECK_TEXTS]))
        embedded = (vector for batch in embedded_batches for vector in batch)

        def kv_blob(ids: np.ndarray) -> bytes | None:
            if not self.config.precompute_kv:
                return None
            go_on()
            return self.engine.encode_chunk_kv(ids, codec)

        return [
            DocumentInput(
                external_id=doc.external_id,
                metadata=doc.metadata,
                chunks=[
                    ChunkInput(
                        text=text,
                        token_ids=ids,
                        vector=vector if vector is not None else next(embedded),
                        kv_blob=kv_blob(ids),
                    )
                    for text, ids, vector in chunks
                ],
            )
            for doc, chunks in zip(documents, pieces)
        ]

    def commit(self, tenant: str, documents: list[DocumentInput]) -> UpsertResult:
        """Write one batch durably in one transaction, then bring the index up to date."""
        owner = self.tenant_number(tenant)
        with self._index_lock:
            result = self.store.upsert(tenant, documents, kv_fingerprint=self.engine.kv_fingerprint)
            if len(result.removed):
                self.index.remove(result.removed)
            _add_entries(self.index, result.added, result.vectors, result.readers, owner=owner)
            self._retrain_if_grown()
        return result

    def delete_documents(self, tenant: str, external_ids: list[str]) -> int:
        with self._index_lock:
            removed = self.store.delete_documents(tenant, external_ids)
            self.index.remove(removed)
        return len(removed)

    # ---- retrieval

    def embed_query(self, text: str, field: str = "query_text") -> np.ndarray:
        if not text.strip():
            raise InvalidArgument(f"{field}: must not be empty")
        return self.models.embedder.embed([text])[0]

    def search(self, tenant: str, query: np.ndarray, k: int, wait: bool = True, with_tokens: bool = True) -> list[Hit] | None:
        """Top-k chunks `tenant` may read; the store re-checks every hit the index returns. Their
        token ids are read only `with_tokens` (generation needs them, a Search reply does not).

        With `wait=False`, None at once if a writer holds the index. A search takes well under a
        millisecond, so the server runs it on the event loop, which skips two thread hand-offs and
        the GIL contention of a thread pool that under load cost more than the search; a commit
        holds the index across its fsync, and then the server waits in a thread instead.
        """
        number = self.tenant_number(tenant)
        query = unit_rows(query[None, :], ["query_vector"])
        if not self._index_lock.acquire(blocking=wait):
            return None
        try:
            scores, ids = self.index.search(query, number, k)
        finally:
            self._index_lock.release()
        found = ids[0] >= 0
        cosines = np.clip(scores[0][found], -1.0, 1.0)  # unit vectors; float32 rounding may step past 1
        score_of = dict(zip(ids[0][found].tolist(), cosines.tolist()))
        chunks = self.store.readable_chunks(tenant, list(score_of), with_tokens)
        return [Hit(chunk=c, score=score_of[c.chunk_id]) for c in chunks]

    def answer(self, hits: list[Hit], question: str, mode: PrefillMode, max_new_tokens: int) -> Iterator[GeneratedToken]:
        """Generate from the hits' chunks: their KV comes from the worker's cache, else the store.

        The request is checked at this call; the stream ends with Unavailable at the next token
        once the server is stopping.
        """
        chunks = [RetrievedChunk(h.chunk.chunk_id, h.chunk.token_ids, functools.partial(self._stored_kv, h.chunk.chunk_id)) for h in hits]
        return self._until_stopping(self.engine.answer(chunks, question, mode, max_new_tokens))

    def _until_stopping(self, tokens: Iterator[GeneratedToken]) -> Iterator[GeneratedToken]:
        with contextlib.closing(tokens):
            for token in tokens:
                yield token
                if self.stopping.is_set():
                    raise Unavailable("the server is shutting down; ask again")

    def _stored_kv(self, chunk_id: int) -> bytes | None:
        """A chunk's stored KV for generation; one failing its checksum is a cache miss (the worker recomputes)."""
        try:
            return self.store.read_kv(chunk_id)
        except Corrupted as exc:
            log.warning("chunk %d: stored KV unusable (%s); recomputing it", chunk_id, exc)
            return None

    def prompt_tokens(self, hits: list[Hit], question: str) -> int:
        return len(self.engine.layout.full(self.models.llm.tokenizer, [h.chunk.token_ids for h in hits], question))

    def kv_chunk_ids(self, tenant: str, chunk_ids: list[int]) -> list[int]:
        """The requested chunks that have KV, in request order; NotFound for any the tenant may not read."""
        readable = {c.chunk_id: c for c in self.store.readable_chunks(tenant, chunk_ids, with_tokens=False)}
        for chunk_id in chunk_ids:
            if chunk_id not in readable:
                raise NotFound(f"chunk_ids: chunk {chunk_id} not found")
        return [chunk_id for chunk_id in chunk_ids if readable[chunk_id].has_kv]

    def read_kv(self, chunk_id: int) -> tuple[str, bytes]:
        """A chunk's encoded KV blob and the codec its header names."""
        blob = self.store.read_kv(chunk_id)
        if blob is None:
            raise NotFound(f"chunk_ids: chunk {chunk_id} has no KV")
        return codec_of(blob), blob


def _checked(settings: TenantSettings) -> TenantSettings:
    if settings.kv_codec and settings.kv_codec not in CODECS:
        raise InvalidArgument(f"settings.kv_codec: unknown {settings.kv_codec!r}; known: {sorted(CODECS)} or empty for the default")
    return settings


def _add_entries(index, ids: np.ndarray, vectors: np.ndarray, readers: list[list[int]], owner: int | None = None) -> None:
    """Add chunks to the index under their first reader (or `owner`) and grant the rest."""
    if len(ids) == 0:
        return
    firsts = np.array([owner if owner is not None else r[0] for r in readers], dtype=np.int64)
    for tenant in np.unique(firsts):
        mine = firsts == tenant
        index.add(ids[mine], vectors[mine], int(tenant))
    granted: dict[int, list[int]] = {}
    for chunk_id, first, tenants in zip(ids.tolist(), firsts.tolist(), readers):
        for tenant in tenants:
            if tenant != first:
                granted.setdefault(tenant, []).append(chunk_id)
    for tenant, chunk_ids in granted.items():
        index.grant(np.array(chunk_ids, dtype=np.int64), tenant)
