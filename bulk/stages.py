"""The bulk job's compute stages, as Ray Data `map_batches` callables over batches of documents.

A row stays one document from end to end (its chunks travel as list columns), so the sink
upserts whole documents and a retried batch replaces them rather than leaving halves. Model
stages are classes: Ray builds one per actor and the model loads once there. Ray gives an
actor with fractional `num_cpus` one OMP thread; `threads` sets torch's own back to the node's
cores, since on a small machine the stages take turns rather than run side by side.
"""

import os

import numpy as np
import torch

from bulk.target import ServerTarget
from worker.chunker import chunk_text
from worker.config import WorkerConfig
from worker.embedder import Embedder
from worker.engine import Engine, EngineConfig
from worker.llm import load_llm
from worker.tokenizer import load_tokenizer

Batch = dict[str, np.ndarray]


def skip_unchanged(batch: Batch, target: ServerTarget) -> Batch:
    """The batch without the documents the server already stores with the same content hash."""
    with target.client() as client:
        stored = set(client.unchanged(list(zip(batch["id"], batch["content_hash"]))))
    keep = np.array([external_id not in stored for external_id in batch["id"]], dtype=bool)
    return {name: column[keep] for name, column in batch.items()}


def use_cores(threads: int) -> None:
    """torch's intra-op threads: `threads`, or every core of this node when 0."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


class Chunk:
    """Cuts each document's text with the server's chunker and tokenizer; the text column leaves here."""

    def __init__(self, models: WorkerConfig) -> None:
        self._tokenizer = load_tokenizer(models)
        self._chunk_tokens = models.chunk_tokens  # the server's: token ids must be what its chunker makes

    def __call__(self, batch: Batch) -> Batch:
        cut = [chunk_text(text, self._tokenizer, self._chunk_tokens) for text in batch["text"]]
        out = {name: column for name, column in batch.items() if name != "text"}
        out["chunk_texts"] = _objects([[c.text for c in chunks] for chunks in cut])
        out["token_ids"] = _objects([[c.token_ids for c in chunks] for chunks in cut])
        return out


class Embed:
    """Each chunk's vector, as the server's embedder makes it: float32 [chunks, dim] a document."""

    def __init__(self, models: WorkerConfig, threads: int = 0) -> None:
        use_cores(threads)
        self._embedder = Embedder(models.embedder_path) if models.embedder_path else Embedder.default()

    def __call__(self, batch: Batch) -> Batch:
        texts = [list(chunks) for chunks in batch["chunk_texts"]]
        vectors = self._embedder.embed([t for chunks in texts for t in chunks])
        return _with(batch, "vectors", _split(vectors, [len(t) for t in texts]))


class PrecomputeKV:
    """Each chunk's KV after the prompt prefix, encoded in `codec`: the worker's own batched path
    (`Engine.encode_chunks_kv`), whose blobs name the model's KV fingerprint, which the server
    checks against its own. A blob is what the server would have computed.

    Given the server's fingerprint (its UploadSpec), an actor whose model differs stops as it
    starts, before computing anything the server would refuse."""

    def __init__(self, models: WorkerConfig, codec: str, threads: int = 0, server_fingerprint: str = "") -> None:
        use_cores(threads)
        self._engine = Engine(load_llm(models), EngineConfig(kv_codec=codec))
        if server_fingerprint and self._engine.kv_fingerprint != server_fingerprint:
            raise ValueError(
                f"this job's model computes KV with fingerprint {self._engine.kv_fingerprint}, the server's is {server_fingerprint}:"
                " run the job with the server's models"
            )

    def __call__(self, batch: Batch) -> Batch:
        tokens = [[np.asarray(ids) for ids in chunks] for chunks in batch["token_ids"]]
        blobs = self._engine.encode_chunks_kv([ids for chunks in tokens for ids in chunks])
        return _with(batch, "kv_blobs", _split(blobs, [len(t) for t in tokens]))


def _with(batch: Batch, name: str, values: list) -> Batch:
    """`batch` and a new column; chunk texts as lists again (Arrow takes lists of str, not the object arrays it gave)."""
    return {**batch, "chunk_texts": _objects([list(texts) for texts in batch["chunk_texts"]]), name: _objects(values)}


def _split(items, counts: list[int]) -> list:
    """`items` cut back into consecutive runs of `counts`."""
    bounds = np.cumsum([0] + counts)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _objects(values: list) -> np.ndarray:
    """A column of per-document values (lists, arrays of different shapes) as Ray takes it."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: numpy would stack equal-length lists into 2-D
        column[i] = value
    return column
