"""The workers a router sends work to: one in the server's own process, or one over gRPC.

Both offer the same async calls, so the router treats them alike. A remote worker that cannot
be reached raises `WorkerUnavailable`; input its model cannot serve raises `WorkerInputError`
as the in-process worker does, so a client sees the same status either way.
"""

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator, Protocol

import grpc
import numpy as np

from client.api import MAX_MESSAGE_BYTES
from protos.tenantkv.v1 import worker_pb2, worker_pb2_grpc
from server.offload import Offload
from store.errors import Unavailable
from worker.engine import ComputedKV
from worker.errors import WorkerInputError
from worker.generate import GeneratedToken
from worker.kv_cache import CacheEvent, CacheView
from worker.node import GenerateJob, KVFetcher, WorkerNode, WorkerStatus
from worker.service import EVENT_KINDS, MODE_CODES

STATUS_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 600.0
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}
EVENTS_BY_CODE = {code: kind for kind, code in EVENT_KINDS.items()}


class WorkerUnavailable(Unavailable):
    """The worker did not answer (down, restarting or unreachable); work not yet streamed may go elsewhere."""


@dataclass(frozen=True, slots=True)
class Started:
    """A generation the worker accepted: how its chunks' KV was found, its token stream, and the
    chunks' KV it computed on misses (what has arrived of it: complete once the stream has ended)."""

    prompt_tokens: int
    cache_hits: int
    fetched_chunks: int
    fetched_bytes: int
    tokens: AsyncIterator[GeneratedToken]  # aclose() cancels the request
    computed: Callable[[], list[ComputedKV]]


class WorkerHandle(Protocol):
    name: str

    async def generate(self, job: GenerateJob, capability: str) -> Started: ...

    async def embed(self, texts: list[str]) -> np.ndarray: ...

    async def precompute_kv(self, token_lists: list[np.ndarray], codec: str) -> list[bytes]: ...

    async def status(self, since: int) -> WorkerStatus: ...

    async def close(self) -> None: ...


class LocalWorker:
    """A `WorkerNode` in the server's process: no network hop; chunk KV read from the store directly.

    Answers and chunk KV wait for the engine's scheduler on threads; embeddings run on the
    server's one model thread, with its query embeddings and the tokenizer's work."""

    def __init__(self, node: WorkerNode, offload: Offload, fetch: KVFetcher, name: str = "in-process") -> None:
        self.name = name
        self.node = node
        self._offload = offload
        self._fetch = fetch

    async def generate(self, job: GenerateJob, capability: str) -> Started:
        """The capability is not needed here: the store is in this process and the router authorised the request."""
        generation = await asyncio.to_thread(self.node.generate, job, self._fetch)
        return Started(
            generation.prompt_tokens, generation.cache_hits, generation.fetched_chunks, generation.fetched_bytes,
            self._stream(generation.tokens), lambda: generation.computed,
        )

    async def _stream(self, tokens: Iterator[GeneratedToken]) -> AsyncIterator[GeneratedToken]:
        try:
            while (token := await asyncio.to_thread(next, tokens, None)) is not None:
                yield token
        finally:
            tokens.close()

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await self._offload.model(self.node.embed, texts)

    async def precompute_kv(self, token_lists: list[np.ndarray], codec: str) -> list[bytes]:
        cancel = threading.Event()  # set if the caller goes away: the model stops at its next step
        try:
            return await asyncio.to_thread(self.node.precompute_kv, token_lists, codec, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def status(self, since: int) -> WorkerStatus:
        return self.node.status(since)

    async def close(self) -> None:
        return None


class RemoteWorker:
    """A `tenantkv worker` reached over gRPC; its channel opens on first use, on the event loop that uses it."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.name = address
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._worker_stub: worker_pb2_grpc.WorkerStub | None = None

    @property
    def _stub(self) -> worker_pb2_grpc.WorkerStub:
        if self._worker_stub is None:
            options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.name, options=options)
            else:
                self._channel = grpc.aio.secure_channel(self.name, self._credentials, options=options)
            self._worker_stub = worker_pb2_grpc.WorkerStub(self._channel)
        return self._worker_stub

    async def generate(self, job: GenerateJob, capability: str) -> Started:
        request = worker_pb2.GenerateRequest(
            chunks=[
                worker_pb2.ChunkRef(
                    chunk_id=c.chunk_id, kv_key=c.kv_key, token_ids=np.asarray(c.token_ids).tolist(), stored=c.stored,
                    codec=c.codec, keep=c.keep,
                )
                for c in job.chunks
            ],
            question=job.question,
            mode=MODE_CODES[job.mode],
            max_new_tokens=job.max_new_tokens,
            capability=capability,
            tenant=job.tenant,
        )
        started = time.perf_counter()
        call = self._stub.Generate(request, timeout=CALL_TIMEOUT_S)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        if first is grpc.aio.EOF or not first.HasField("accepted"):
            call.cancel()
            raise WorkerUnavailable(f"worker {self.name}: ended a generation before accepting it")
        accepted = first.accepted
        computed = ComputedPieces()
        return Started(
            accepted.prompt_tokens, accepted.cache_hits, accepted.fetched_chunks, accepted.fetched_bytes,
            self._stream(call, started, computed), computed.complete,
        )

    async def _stream(self, call, started: float, computed: "ComputedPieces") -> AsyncIterator[GeneratedToken]:
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                if message.HasField("computed"):
                    computed.add(message.computed)
                    continue
                yield GeneratedToken(message.token.token_id, message.token.text, time.perf_counter() - started)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        finally:
            call.cancel()

    async def embed(self, texts: list[str]) -> np.ndarray:
        try:
            reply = await self._stub.Embed(worker_pb2.EmbedRequest(texts=texts), timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        return np.array([v.values for v in reply.vectors], dtype=np.float32).reshape(len(texts), -1)

    async def precompute_kv(self, token_lists: list[np.ndarray], codec: str) -> list[bytes]:
        request = worker_pb2.PrecomputeKVRequest(chunks=[worker_pb2.TokenIds(ids=np.asarray(t).tolist()) for t in token_lists], codec=codec)
        pieces: list[list[bytes]] = [[] for _ in token_lists]
        try:
            async for piece in self._stub.PrecomputeKV(request, timeout=CALL_TIMEOUT_S):
                pieces[piece.chunk].append(piece.data)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        return [b"".join(parts) for parts in pieces]

    async def status(self, since: int) -> WorkerStatus:
        try:
            reply = await self._stub.Status(worker_pb2.StatusRequest(since_sequence=since), timeout=STATUS_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        events = [CacheEvent(e.sequence, EVENTS_BY_CODE[e.kind], e.kv_key, e.bytes) for e in reply.events]
        snapshot = {e.kv_key: e.bytes for e in reply.snapshot} if reply.is_snapshot else None
        return WorkerStatus(
            kv_fingerprint=reply.kv_fingerprint,
            queue_depth=reply.queue_depth,
            active_requests=reply.active_requests,
            cache=CacheView(reply.sequence, snapshot, events),
            cache_hits=reply.cache_hits,
            cache_misses=reply.cache_misses,
            fetched_bytes=reply.fetched_bytes,
            embedding_dim=reply.embedding_dim,
        )

    def _error(self, exc: grpc.aio.AioRpcError) -> Exception:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return WorkerInputError(exc.details())
        if exc.code() in UNREACHABLE:
            return WorkerUnavailable(f"worker {self.name}: {exc.code().name}: {exc.details()}")
        return RuntimeError(f"worker {self.name} failed: {exc.code().name}: {exc.details()}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class ComputedPieces:
    """The computed chunks' KV a remote worker streams back, put together piece by piece (a gRPC
    stream keeps them in order, one chunk's pieces after another's)."""

    def __init__(self) -> None:
        self._done: list[ComputedKV] = []
        self._parts: list[bytes] = []

    def add(self, piece: worker_pb2.ComputedKVPiece) -> None:
        self._parts.append(piece.data)
        if piece.last:
            self._done.append(ComputedKV(piece.chunk_id, b"".join(self._parts), piece.seconds))
            self._parts = []

    def complete(self) -> list[ComputedKV]:
        return list(self._done)

