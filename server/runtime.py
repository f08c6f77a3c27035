"""The service's logic in plain Python: admin, ingestion and retrieval over the indexed store and the models.

Every method blocks (LMDB, numpy, torch), so the gRPC layer calls them off the event loop.
Tenant data is written only through `IndexedStore`, which keeps the store and the index in step.
"""

import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from kvcodec import CODECS, codec_of
from server.compactor import Compactor
from server.config import ServerConfig
from server.indexed_store import Hit, IndexedStore
from server.ratelimit import RateLimiter
from store.errors import Corrupted, InvalidArgument, NotFound, Unavailable
from store.records import ChunkInput, DocumentInput, KeyScope, Tenant, TenantSettings, UpsertResult
from store.store import Store
from worker.chunker import chunk_text, token_ids
from worker.config import WorkerConfig
from worker.embedder import Embedder
from worker.blend import PrefillMode
from worker.engine import Engine, EngineConfig, RetrievedChunk
from worker.generate import GeneratedToken
from worker.llm import LLM, load_llm

log = logging.getLogger(__name__)

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


class Runtime:
    """Admin, ingestion and retrieval on top of the indexed store and the models."""

    def __init__(self, config: ServerConfig, store: Store, models: Models) -> None:
        self.config = config
        self.store = store
        self.indexed_store = IndexedStore(store)
        self.models = models
        self.engine = Engine(models.llm, EngineConfig(kv_codec=config.kv_codec, cache_bytes=config.kv_cache_bytes))
        self.rate_limiter = RateLimiter()
        self.stopping = threading.Event()  # set at shutdown: model work ends at its next chunk or token
        self.compactor = Compactor(store, self.stopping)

    @classmethod
    def open(cls, config: ServerConfig, models: Models | None = None) -> "Runtime":
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.store_config())
        runtime = cls(config, store, models or load_models(config.worker_config()))
        runtime.indexed_store.rebuild_index()
        return runtime

    def close(self) -> None:
        self.compactor.join()
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
        return self.indexed_store.commit(tenant, documents, self.engine.kv_fingerprint)

    # ---- retrieval

    def embed_query(self, text: str, field: str = "query_text") -> np.ndarray:
        if not text.strip():
            raise InvalidArgument(f"{field}: must not be empty")
        return self.models.embedder.embed([text])[0]

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
