"""The bulk job's end: a Ray Data `Datasink` whose write tasks stream Upsert batches to the server.

Each document goes with its chunks' texts, token ids, vectors and KV blobs and its content hash;
the tenant is the one of the job's key. A batch the server refuses (INVALID_ARGUMENT: a blob or
token list it does not accept) is counted as failed documents and the job goes on; any other
error fails the write task, and a re-run resumes, since re-sent external ids replace, never duplicate.
"""

import json
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc
import numpy as np
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from bulk.target import ServerTarget
from client.api import ChunkUpload, DocumentUpload

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What write tasks stored (and failed to), summed over the job."""

    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    kv_bytes: int = 0
    failures: int = 0  # documents of refused batches

    def __add__(self, other: "WriteStats") -> "WriteStats":
        return WriteStats(*(a + b for a, b in zip(self.totals(), other.totals())))

    def totals(self) -> tuple[int, ...]:
        return (self.documents, self.chunks, self.tokens, self.kv_bytes, self.failures)


class UpsertSink(Datasink[WriteStats]):
    def __init__(self, target: ServerTarget, documents_per_upsert: int) -> None:
        if documents_per_upsert < 1:
            raise ValueError(f"documents_per_upsert: must be positive, got {documents_per_upsert}")
        self._target = target
        self._per_upsert = documents_per_upsert
        self.stats = WriteStats()  # the job's totals, on the driver once the write completes

    def get_name(self) -> str:
        return "Upsert"

    def write(self, blocks: Iterable[Block], ctx) -> WriteStats:
        stats = WriteStats()
        with self._target.client() as client:
            for batch in _batches(_documents(blocks), self._per_upsert):
                try:
                    client.upsert([batch])
                except grpc.RpcError as exc:
                    if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    log.warning("the server refused %d documents (%s...): %s", len(batch), batch[0].external_id, exc.details())
                    stats += WriteStats(failures=len(batch))
                    continue
                stats += _stored(batch)
        return stats

    def on_write_complete(self, write_result: WriteResult[WriteStats]) -> None:
        self.stats = sum(write_result.write_returns, WriteStats())


def _documents(blocks: Iterable[Block]) -> Iterator[DocumentUpload]:
    for block in blocks:
        accessor = BlockAccessor.for_block(block)
        if accessor.num_rows() == 0:  # every document of it was skipped unchanged; such a block has no columns
            continue
        columns = accessor.to_batch_format("numpy")
        for i, external_id in enumerate(columns["id"]):
            texts = columns["chunk_texts"][i]
            blobs = columns["kv_blobs"][i] if "kv_blobs" in columns else [None] * len(texts)  # no KV stage: the tenant stores none at ingestion
            parts = zip(texts, columns["vectors"][i], columns["token_ids"][i], blobs)
            chunks = [
                ChunkUpload(text=text, vector=vector, token_ids=np.asarray(ids), kv_blob=None if blob is None else bytes(blob))
                for text, vector, ids, blob in parts
            ]
            yield DocumentUpload(str(external_id), chunks, json.loads(columns["metadata"][i]), str(columns["content_hash"][i]))


def _batches(documents: Iterator[DocumentUpload], size: int) -> Iterator[list[DocumentUpload]]:
    batch: list[DocumentUpload] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _stored(batch: list[DocumentUpload]) -> WriteStats:
    chunks = [c for d in batch for c in d.chunks]
    return WriteStats(
        documents=len(batch),
        chunks=len(chunks),
        tokens=sum(len(c.token_ids) for c in chunks),
        kv_bytes=sum(len(c.kv_blob or b"") for c in chunks),
    )
