"""An upsert batch made ready to commit: cut into chunks, embedded and its chunk KV precomputed by the
workers, except what the caller sent: its vectors, and its KV blobs once a sample is recomputed (`server.uploads`).

Model work goes to the router in steps (CANCEL_CHECK_TEXTS texts; KV_STEP_CHUNKS chunks a worker,
one batch of the worker's scheduler), so a server that is stopping leaves at most one step
running; a caller that goes away cancels its step at the model's next pass. Nothing is written here.
"""

import asyncio
import threading

import numpy as np

from server.convert import UpsertBatch
from server.offload import Offload
from server.runtime import Runtime
from server.uploads import check_token_ids, verify_sample
from store.errors import Unavailable
from store.records import ChunkInput, DocumentInput

CANCEL_CHECK_TEXTS = 16  # texts embedded between two checks for shutdown
KV_STEP_CHUNKS = 16  # chunks a worker precomputes between two checks: 4,096 tokens of 256-token chunks


async def prepare(
    runtime: Runtime, offload: Offload, tenant: str, batch: UpsertBatch, uploaded: dict[tuple[int, int], bytes]
) -> list[DocumentInput]:
    """`uploaded`: the blobs sent with the batch by (document, chunk), already past `check_blobs`.
    Chunks with a vector are not embedded; chunks with an uploaded blob get no KV computed."""
    documents = batch.documents
    cancelled = threading.Event()  # the chunker checks it between documents
    try:
        cut = await offload.model(runtime.cut, documents, cancelled)
    except asyncio.CancelledError:  # the caller went away or its deadline passed
        cancelled.set()
        raise
    check_token_ids(batch.claims, [[c.token_ids for c in doc] for doc in cut])
    chunks = [chunk for doc in cut for chunk in doc]
    claimed = [(batch.claims[i][j].field, cut[i][j].token_ids, blob) for (i, j), blob in uploaded.items()]
    await verify_sample(runtime.router, offload, claimed, runtime.config.upload_recompute_fraction)
    sent = [uploaded.get((i, j)) for i, doc in enumerate(cut) for j in range(len(doc))]
    to_embed = [c.text for c in chunks if c.vector is None]
    embedded: list[np.ndarray] = []
    for start in range(0, len(to_embed), CANCEL_CHECK_TEXTS):
        _check_running(runtime)
        embedded.extend(await runtime.router.embed(to_embed[start : start + CANCEL_CHECK_TEXTS]))
    blobs = list(sent)
    to_compute = [k for k, blob in enumerate(sent) if blob is None]
    if to_compute and await offload.io(runtime.kv_policy, tenant) == "eager":  # other policies store KV on retrieval, or never
        codec = await offload.io(runtime.kv_codec, tenant)
        step = KV_STEP_CHUNKS * len(runtime.router.workers)
        for start in range(0, len(to_compute), step):
            _check_running(runtime)
            part = to_compute[start : start + step]
            for k, blob in zip(part, await runtime.router.precompute_kv([chunks[k].token_ids for k in part], codec)):
                blobs[k] = blob
    vectors = iter(embedded)
    inputs = iter(
        ChunkInput(
            text=c.text, token_ids=c.token_ids, vector=c.vector if c.vector is not None else next(vectors), kv_blob=blob,
            kv_uploaded=upload is not None,
        )
        for c, blob, upload in zip(chunks, blobs, sent)
    )
    return [
        DocumentInput(external_id=spec.external_id, metadata=spec.metadata, chunks=[next(inputs) for _ in doc], content_hash=content_hash)
        for spec, doc, content_hash in zip(documents, cut, batch.content_hashes)
    ]


def _check_running(runtime: Runtime) -> None:
    if runtime.stopping.is_set():
        raise Unavailable("the server is shutting down; retry the batch")
