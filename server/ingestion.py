"""An upsert batch made ready to commit: cut into chunks, embedded and its chunk KV precomputed by the workers.

Model work goes to the router in steps (CANCEL_CHECK_TEXTS texts; KV_STEP_CHUNKS chunks a worker,
one batch of the worker's scheduler), so a server that is stopping leaves at most one step
running; a caller that goes away cancels its step at the model's next pass. Nothing is written here.
"""

import asyncio
import threading

import numpy as np

from server.offload import Offload
from server.runtime import DocumentSpec, Runtime
from store.errors import Unavailable
from store.records import ChunkInput, DocumentInput

CANCEL_CHECK_TEXTS = 16  # texts embedded between two checks for shutdown
KV_STEP_CHUNKS = 16  # chunks a worker precomputes between two checks: 4,096 tokens of 256-token chunks


async def prepare(runtime: Runtime, offload: Offload, tenant: str, documents: list[DocumentSpec]) -> list[DocumentInput]:
    cancelled = threading.Event()  # the chunker checks it between documents
    try:
        cut = await offload.model(runtime.cut, documents, cancelled)
    except asyncio.CancelledError:  # the caller went away or its deadline passed
        cancelled.set()
        raise
    chunks = [chunk for doc in cut for chunk in doc]
    to_embed = [c.text for c in chunks if c.vector is None]
    embedded: list[np.ndarray] = []
    for start in range(0, len(to_embed), CANCEL_CHECK_TEXTS):
        _check_running(runtime)
        embedded.extend(await runtime.router.embed(to_embed[start : start + CANCEL_CHECK_TEXTS]))
    blobs: list[bytes | None] = [None] * len(chunks)
    if runtime.config.precompute_kv:
        codec = await offload.io(runtime.kv_codec, tenant)
        step = KV_STEP_CHUNKS * len(runtime.router.workers)
        for start in range(0, len(chunks), step):
            _check_running(runtime)
            blobs[start : start + step] = await runtime.router.precompute_kv([c.token_ids for c in chunks[start : start + step]], codec)
    vectors = iter(embedded)
    inputs = iter(
        ChunkInput(text=c.text, token_ids=c.token_ids, vector=c.vector if c.vector is not None else next(vectors), kv_blob=blob)
        for c, blob in zip(chunks, blobs)
    )
    return [
        DocumentInput(external_id=spec.external_id, metadata=spec.metadata, chunks=[next(inputs) for _ in doc])
        for spec, doc in zip(documents, cut)
    ]


def _check_running(runtime: Runtime) -> None:
    if runtime.stopping.is_set():
        raise Unavailable("the server is shutting down; retry the batch")
