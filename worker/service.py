"""`tenantkv.v1.Worker` over gRPC: a `WorkerNode` behind the internal API the server's router calls.

The engine's scheduler owns the generation model; calls wait for it on threads of their own.
Embedding runs on one thread (torch's intra-op pool gains nothing from concurrent calls on a
small CPU). Input the model cannot serve is INVALID_ARGUMENT, work cut short by the worker
stopping UNAVAILABLE, anything else INTERNAL.
"""

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Iterator

import grpc
import numpy as np

from client.api import KV_PIECE_BYTES
from protos.tenantkv.v1 import retrieval_pb2, worker_pb2, worker_pb2_grpc
from worker.blend import PrefillMode
from worker.engine import ComputedKV
from worker.errors import RequestCancelled, WorkerInputError
from worker.kv_cache import EventKind
from worker.node import ChunkRef, GenerateJob, KVFetcher, WorkerNode

log = logging.getLogger(__name__)

MODES = {
    retrieval_pb2.GENERATION_MODE_FULL_PREFILL: PrefillMode.FULL_PREFILL,
    retrieval_pb2.GENERATION_MODE_FULL_REUSE: PrefillMode.FULL_REUSE,
    retrieval_pb2.GENERATION_MODE_BLEND: PrefillMode.BLEND,
}
MODE_CODES = {mode: code for code, mode in MODES.items()}
EVENT_KINDS = {EventKind.STORED: worker_pb2.KV_EVENT_KIND_STORED, EventKind.REMOVED: worker_pb2.KV_EVENT_KIND_REMOVED}

FetcherFor = Callable[[str], KVFetcher]  # a capability -> the fetcher that presents it to the store


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, node: WorkerNode, fetcher_for: FetcherFor) -> None:
        self.node = node
        self._fetcher_for = fetcher_for
        self._embedding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantkv-worker-embed")

    async def Generate(self, request, context) -> None:
        """Written with `context.write`, so a router that cancels interrupts this task and the
        request's slot is freed here at once (a generator caught between yields closes only at GC)."""
        mode = MODES.get(request.mode)
        if mode is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"mode: unknown generation mode {request.mode}")
        job = GenerateJob(
            chunks=[
                ChunkRef(c.chunk_id, c.kv_key, np.array(c.token_ids, dtype=np.int64), c.stored, c.codec, c.keep)
                for c in request.chunks
            ],
            question=request.question,
            mode=mode,
            max_new_tokens=request.max_new_tokens,
            tenant=request.tenant,
        )
        try:
            generation = await asyncio.to_thread(self.node.generate, job, self._fetcher_for(request.capability))
        except WorkerInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        tokens = generation.tokens
        try:
            await context.write(
                worker_pb2.GenerateResponse(
                    accepted=worker_pb2.GenerateAccepted(
                        prompt_tokens=generation.prompt_tokens,
                        cache_hits=generation.cache_hits,
                        fetched_chunks=generation.fetched_chunks,
                        fetched_bytes=generation.fetched_bytes,
                    )
                )
            )
            sent_computed = False
            while (token := await asyncio.to_thread(next, tokens, None)) is not None:
                await context.write(worker_pb2.GenerateResponse(token=retrieval_pb2.TokenDelta(token_id=token.token_id, text=token.text)))
                if not sent_computed:  # the prefill is done: its misses are all known, and off the first token's path
                    sent_computed = True
                    for message in computed_messages(generation.computed):
                        await context.write(message)
        except RequestCancelled as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the worker is stopping: {exc}")
        finally:
            tokens.close()

    async def Embed(self, request, context) -> worker_pb2.EmbedResponse:
        vectors = await asyncio.get_running_loop().run_in_executor(self._embedding, self.node.embed, list(request.texts))
        return worker_pb2.EmbedResponse(vectors=[worker_pb2.Embedding(values=v.tolist()) for v in vectors])

    async def PrecomputeKV(self, request, context) -> AsyncIterator[worker_pb2.PrecomputeKVResponse]:
        """Batched on the model; a caller that goes away stops the work at the model's next step."""
        cancel = threading.Event()
        token_lists = [np.array(c.ids, dtype=np.int64) for c in request.chunks]
        try:
            blobs = await asyncio.to_thread(self.node.precompute_kv, token_lists, request.codec, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise
        except WorkerInputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RequestCancelled as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the worker is stopping: {exc}")
        for chunk, blob in enumerate(blobs):
            for offset, piece, last in pieces(blob):
                yield worker_pb2.PrecomputeKVResponse(chunk=chunk, total_bytes=len(blob), offset=offset, data=piece, last=last)

    async def Status(self, request, context) -> worker_pb2.StatusResponse:
        status = self.node.status(request.since_sequence)
        cache = status.cache
        return worker_pb2.StatusResponse(
            kv_fingerprint=status.kv_fingerprint,
            queue_depth=status.queue_depth,
            active_requests=status.active_requests,
            sequence=cache.sequence,
            is_snapshot=cache.snapshot is not None,
            snapshot=[worker_pb2.KVEntry(kv_key=k, bytes=n) for k, n in (cache.snapshot or {}).items()],
            events=[worker_pb2.KVEvent(sequence=e.sequence, kind=EVENT_KINDS[e.kind], kv_key=e.key, bytes=e.nbytes) for e in cache.events],
            cache_hits=status.cache_hits,
            cache_misses=status.cache_misses,
            fetched_bytes=status.fetched_bytes,
            embedding_dim=status.embedding_dim,
        )

    def shutdown(self) -> None:
        self._embedding.shutdown(wait=True, cancel_futures=True)


def pieces(blob: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, piece, last) for a blob in pieces of at most KV_PIECE_BYTES; one empty piece for an empty blob."""
    for offset in range(0, max(len(blob), 1), KV_PIECE_BYTES):
        piece = blob[offset : offset + KV_PIECE_BYTES]
        yield offset, piece, offset + len(piece) == len(blob)


def computed_messages(computed: list[ComputedKV]) -> Iterator[worker_pb2.GenerateResponse]:
    for kv in computed:
        for offset, piece, last in pieces(kv.blob):
            message = worker_pb2.ComputedKVPiece(
                chunk_id=kv.chunk_id, seconds=kv.seconds, total_bytes=len(kv.blob), offset=offset, data=piece, last=last
            )
            yield worker_pb2.GenerateResponse(computed=message)
