"""`bulk_ingest`: the whole job, read -> skip unchanged -> chunk -> embed -> KV -> Upsert, on Ray Data.

It joins the Ray cluster at `ray_address`, or the one this process already started (tests share
one), or starts a local one sized to the machine and stops it at the end.
"""

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.data

from bulk.sink import UpsertSink, WriteStats
from bulk.sources import read_documents
from bulk.stages import Chunk, Embed, PrecomputeKV, skip_unchanged
from bulk.target import ServerTarget
from protos.tenantkv.v1 import ingest_pb2
from worker.config import WorkerConfig


@dataclass(frozen=True, slots=True)
class Layout:
    """How many actors each model stage runs, and the batches they take.

    `actor_cpus` below 1 leaves the scheduler a share of every core (a pipeline whose actors claim
    every CPU can hang, ray#44687); torch in each actor still uses `threads` (0: every core)."""

    chunk_actors: int = 1
    embed_actors: int = 1
    kv_actors: int = 1
    batch_documents: int = 16  # documents in one batch through each stage
    actor_cpus: float = 0.25
    threads: int = 0

    def describe(self) -> str:
        return f"chunk={self.chunk_actors} embed={self.embed_actors} kv={self.kv_actors} batch={self.batch_documents}"


@dataclass(frozen=True, slots=True)
class BulkConfig:
    inputs: tuple[Path, ...]  # JSONL or Parquet files, or directories of them
    target: ServerTarget
    models: WorkerConfig = field(default_factory=WorkerConfig)  # the server's models (its chunk size and the tenant's codec are read from it)
    layout: Layout = Layout()
    documents_per_upsert: int = 32  # documents in one Upsert transaction
    ray_address: str | None = None  # an existing cluster; None: this process's, or a local one
    num_cpus: int | None = None  # a local Ray instance's CPUs; None: the machine's


@dataclass(frozen=True, slots=True)
class Summary:
    documents: int  # stored by this run
    skipped: int  # stored unchanged before it
    chunks: int
    tokens: int
    kv_bytes: int
    failures: int  # documents the server refused
    seconds: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.documents} documents ({self.skipped} unchanged, skipped), {self.chunks} chunks, {self.tokens} tokens, "
            f"{self.kv_bytes / 2**20:.1f} MiB of KV in {self.seconds:.1f} s: {self.chunks_per_s:.2f} chunks/s; {self.failures} failures"
        )


def bulk_ingest(config: BulkConfig) -> Summary:
    """Ingest `config.inputs` into the tenant of the target's key; returns once every batch is durable."""
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=config.ray_address, num_cpus=None if config.ray_address else config.num_cpus or os.cpu_count())
    try:
        started = time.perf_counter()
        with config.target.client() as client:
            spec = client.upload_spec()
        read = read_documents(list(config.inputs)).count()
        sink = UpsertSink(config.target, config.documents_per_upsert)
        if changed(config).limit(1).count():  # else no model actor starts; the check stops at the first changed document
            pipeline(config, spec).write_datasink(sink)
        seconds = time.perf_counter() - started
    finally:
        if started_ray:
            ray.shutdown()
    stats: WriteStats = sink.stats
    return Summary(
        documents=stats.documents,
        skipped=read - stats.documents - stats.failures,
        chunks=stats.chunks,
        tokens=stats.tokens,
        kv_bytes=stats.kv_bytes,
        failures=stats.failures,
        seconds=seconds,
    )


def changed(config: BulkConfig) -> ray.data.Dataset:
    """The input documents the server does not store with the same content hash (tasks, no actors)."""
    return read_documents(list(config.inputs)).map_batches(
        skip_unchanged, fn_kwargs={"target": config.target}, batch_size=config.layout.batch_documents, num_cpus=config.layout.actor_cpus
    )


def pipeline(config: BulkConfig, spec: ingest_pb2.UploadSpecResponse) -> ray.data.Dataset:
    """The documents to store, each with its chunks' texts, token ids, vectors and, when the
    tenant's policy stores KV at ingestion, KV blobs in the tenant's codec."""
    layout = config.layout
    models = dataclasses.replace(config.models, chunk_tokens=spec.chunk_tokens)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    batch = layout.batch_documents
    chunked = changed(config).map_batches(
        Chunk,
        fn_constructor_kwargs={"models": models},
        batch_size=batch,
        concurrency=layout.chunk_actors,
        num_cpus=layout.actor_cpus,
    )
    embedded = chunked.map_batches(
        Embed,
        fn_constructor_kwargs={"models": models, "threads": layout.threads},
        batch_size=batch,
        concurrency=layout.embed_actors,
        num_cpus=layout.actor_cpus,
        num_gpus=gpus,
    )
    if not spec.stores_kv:
        return embedded
    return embedded.map_batches(
        PrecomputeKV,
        fn_constructor_kwargs={"models": models, "codec": spec.kv_codec, "threads": layout.threads, "server_fingerprint": spec.kv_fingerprint},
        batch_size=batch,
        concurrency=layout.kv_actors,
        num_cpus=layout.actor_cpus,
        num_gpus=gpus,
    )
