"""The bulk job end to end: local Ray (2 CPUs), the real models, a real server.

One job ingests a JSONL file and a Parquet directory into one tenant; the same documents go
through the server's own path (Upsert of text) into another. What the job stored must be what
the server would have: the same chunks and token ids, vectors within 1e-5, KV within the codec's
tolerance, and the same first answer token.
"""

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
import ray
import torch

import kvcodec
from bulk.job import BulkConfig, Layout, Summary, bulk_ingest
from bulk.target import ServerTarget
from client.api import DocumentText
from protos.tenantkv.v1 import tenant_admin_pb2
from server.cli import main
from worker.blend import Blender, ChunkKV, PrefillMode
from worker.chunker import chunk_text
from worker.config import WorkerConfig
from worker.prompt import PromptLayout

from tests.bulk.conftest import JSONL_DOCUMENTS, PARQUET_DOCUMENTS, write_inputs

DOCUMENTS = JSONL_DOCUMENTS + PARQUET_DOCUMENTS
QUESTION = "Which river flows into the Atlantic Ocean?"
FP16_TOLERANCE = 2e-2  # batched float32 compute is not bit-identical; fp16 rounds what is left


@dataclass(frozen=True)
class Ingested:
    summary: Summary
    config: BulkConfig
    bulk: ServerTarget  # the tenant the job wrote
    in_server: ServerTarget  # the same documents, cut, embedded and KV-computed by the server


def job_config(bulk_server, target: ServerTarget, inputs, **layout) -> BulkConfig:
    models = WorkerConfig(cache_dir=bulk_server.config.cache_dir)
    return BulkConfig(inputs=tuple(inputs), target=target, models=models, layout=Layout(batch_documents=2, **layout), documents_per_upsert=2)


@pytest.fixture(scope="module")
def ingested(ray_local, bulk_server, tmp_path_factory) -> Ingested:
    config = job_config(bulk_server, bulk_server.tenant("bulk"), write_inputs(tmp_path_factory.mktemp("inputs")))
    summary = bulk_ingest(config)
    in_server = bulk_server.tenant("in-server")
    with in_server.client() as client:
        client.upsert([[DocumentText(d["id"], text=d["text"], metadata=d.get("metadata", {})) for d in DOCUMENTS]])
    return Ingested(summary, config, config.target, in_server)


def stored_chunks(runtime, target: ServerTarget, external_id: str):
    tenant = runtime.store.authenticate(target.api_key).tenant
    return runtime.store.readable_chunks(tenant, runtime.store.document_chunk_ids(tenant, [external_id]).tolist())


def stored_vectors(runtime) -> dict[int, np.ndarray]:
    return {int(i): v for entries in runtime.store.iter_index_entries() for i, v in zip(entries.ids, entries.vectors)}


def expected_chunks(models, documents) -> int:
    return sum(len(chunk_text(d["text"], models.tokenizer, 256)) for d in documents)


def test_every_document_is_stored_once_and_every_chunk_is_searchable(ingested, bulk_server, models):
    assert (ingested.summary.documents, ingested.summary.failures, ingested.summary.skipped) == (len(DOCUMENTS), 0, 0)
    assert ingested.summary.chunks == expected_chunks(models, DOCUMENTS) == len(DOCUMENTS) + 1  # "counting" is two chunks
    with ingested.bulk.client() as client:
        for document in DOCUMENTS:
            chunks = stored_chunks(bulk_server.runtime, ingested.bulk, document["id"])
            for chunk in chunks:
                hit = client.search(chunk.text, k=1).hits[0]
                assert (hit.external_id, hit.chunk_index, hit.text) == (document["id"], chunk.index, chunk.text)


def test_chunks_vectors_and_kv_equal_the_in_server_path(ingested, bulk_server):
    runtime = bulk_server.runtime
    vectors = stored_vectors(runtime)
    for document in DOCUMENTS:
        ours = stored_chunks(runtime, ingested.bulk, document["id"])
        theirs = stored_chunks(runtime, ingested.in_server, document["id"])
        assert [c.text for c in ours] == [c.text for c in theirs]
        assert ours[0].metadata == theirs[0].metadata == document.get("metadata", {})
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a.token_ids, b.token_ids)
            np.testing.assert_allclose(vectors[a.chunk_id], vectors[b.chunk_id], atol=1e-5, rtol=0)
            kv_a, kv_b = kvcodec.decode(runtime.store.read_kv(a.chunk_id)), kvcodec.decode(runtime.store.read_kv(b.chunk_id))
            assert kv_a.shape == kv_b.shape
            assert (kv_a - kv_b).abs().max().item() <= FP16_TOLERANCE * kv_b.abs().max().item()


def answer_logits(models, runtime, target: ServerTarget, external_ids: list[str]) -> torch.Tensor:
    """The next-token logits of QUESTION over these documents' stored KV, blended as the worker does."""
    layout = PromptLayout.build(models.tokenizer)
    blender = Blender(models.llm.forward, torch.from_numpy(layout.prefix))
    chunks = [
        ChunkKV(torch.from_numpy(layout.chunk_segment(c.token_ids)), kvcodec.decode(runtime.store.read_kv(c.chunk_id)).to(models.llm.forward.dtype))
        for external_id in external_ids
        for c in stored_chunks(runtime, target, external_id)
    ]
    question = torch.from_numpy(layout.question_segment(models.tokenizer, QUESTION))
    return blender.blend_prefill(chunks, question, mode=PrefillMode.BLEND).logits.float()


def test_first_answer_token_and_its_distribution_equal_the_in_server_path(ingested, bulk_server, models):
    first = []
    for target in (ingested.bulk, ingested.in_server):
        with target.client() as client:
            events = list(client.ask(QUESTION, k=2, max_new_tokens=1))
        first.append([e.token.token_id for e in events if e.WhichOneof("event") == "token"][0])
    assert first[0] == first[1]
    ours, theirs = (answer_logits(models, bulk_server.runtime, t, ["loire", "rhine"]) for t in (ingested.bulk, ingested.in_server))
    kl = torch.nn.functional.kl_div(ours.log_softmax(-1), theirs.log_softmax(-1), log_target=True, reduction="sum").item()
    assert kl < 1e-3
    assert ours.argmax().item() == theirs.argmax().item()


def model_actors() -> int:
    """Actors of the model stages (Chunk, Embed, PrecomputeKV) the cluster ever started, dead or alive."""
    names = ("Chunk", "Embed", "PrecomputeKV")
    return sum(any(n in actor["ActorClassName"] for n in names) for actor in ray._private.state.actors().values())


def test_a_rerun_through_the_cli_skips_every_stored_document_without_starting_a_model(ingested, bulk_server, capsys):
    tenant = bulk_server.runtime.store.authenticate(ingested.bulk.api_key).tenant
    before = bulk_server.runtime.store.tenant_stats(tenant)
    actors = model_actors()
    assert actors > 0  # the first run's
    argv = ["bulk-ingest", *map(str, ingested.config.inputs), "--server", ingested.bulk.address, "--batch", "2"]
    argv += ["--cache-dir", str(bulk_server.config.cache_dir)]
    os.environ["TENANTKV_API_KEY"] = ingested.bulk.api_key
    try:
        assert main(argv) == 0
    finally:
        del os.environ["TENANTKV_API_KEY"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["documents"], summary["skipped"], summary["chunks"], summary["failures"]) == (0, len(DOCUMENTS), 0, 0)
    assert bulk_server.runtime.store.tenant_stats(tenant) == before
    assert model_actors() == actors


def precompute_actor_pid() -> int | None:
    """The PrecomputeKV actor's process, once alive (the state API needs the dashboard, which tests do not start)."""
    for actor in ray._private.state.actors().values():
        if "PrecomputeKV" in actor["ActorClassName"] and actor["State"] == "ALIVE":
            return actor["Pid"]
    return None


def test_a_job_whose_kv_actor_is_killed_completes_with_each_document_once(ray_local, bulk_server, tmp_path, models):
    target = bulk_server.tenant("killed")
    config = replace(job_config(bulk_server, target, write_inputs(tmp_path)), layout=Layout(batch_documents=1), documents_per_upsert=1)
    tenant = bulk_server.runtime.store.authenticate(target.api_key).tenant
    result: list[Summary] = []
    job = threading.Thread(target=lambda: result.append(bulk_ingest(config)))
    job.start()
    killed = None
    while job.is_alive() and killed is None:
        pid = precompute_actor_pid()
        if pid is not None and bulk_server.runtime.store.tenant_stats(tenant).documents >= 1:  # mid-job: some stored, more to come
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.2)
    job.join()
    assert killed is not None, "the job ended before the actor could be killed"
    assert (result[0].documents, result[0].failures) == (len(DOCUMENTS), 0)
    for document in DOCUMENTS:
        chunks = stored_chunks(bulk_server.runtime, target, document["id"])
        assert len(chunks) == len(chunk_text(document["text"], models.tokenizer, 256))
    assert bulk_server.runtime.store.tenant_stats(tenant).chunks == expected_chunks(models, DOCUMENTS)


def test_a_tenant_that_stores_no_kv_at_ingestion_gets_none_computed(ray_local, bulk_server, tmp_path):
    target = bulk_server.tenant("lazy")
    bulk_server.admin.update_tenant("lazy", tenant_admin_pb2.TenantSettings(kv_policy="lazy"))
    summary = bulk_ingest(job_config(bulk_server, target, write_inputs(tmp_path)))
    assert (summary.documents, summary.failures, summary.kv_bytes) == (len(DOCUMENTS), 0, 0)  # no blob sent
    stats = bulk_server.admin.get_tenant("lazy").stats
    assert (stats.chunks, stats.kv_bytes) == (summary.chunks, 0)
