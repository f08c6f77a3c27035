"""Work stops when its caller goes, and so does the server: a cancelled Upsert's model work ends at
its next chunk, SIGTERM ends in-flight work with UNAVAILABLE and exits within 10 s, and a running
compaction stops at its next step instead of holding the shutdown."""

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from client.api import Client, DocumentText
from server.compactor import Compactor
from server.process import ServerProcess
from store import compaction
from store.config import StoreConfig
from store.store import Store
from tests.store.canary import files_holding
from tests.store.test_compaction import canary

PASSAGE = " ".join(f"Passage sentence {i} tells of the river, the mill and the bridge of the old town." for i in range(12))


def text_documents(prefix: str, n: int) -> list[DocumentText]:
    """Documents of about one 200-token chunk each: every chunk costs one KV prefill."""
    return [DocumentText(external_id=f"{prefix}-{i}", text=f"{prefix} {i}. {PASSAGE}") for i in range(n)]


def test_a_cancelled_upsert_stops_its_model_work_and_stores_nothing(server, admin) -> None:
    admin.create_tenant("acme")
    key = admin.create_api_key("acme").api_key
    deadline_s = 2.0
    with Client(server.address, key) as acme, Client(server.address, key, timeout_s=deadline_s) as hasty:
        started = time.perf_counter()
        acme.upsert([text_documents("warm", 8)])
        per_document_s = (time.perf_counter() - started) / 8
        batch = text_documents("big", 400)  # at per_document_s each: far longer than the deadline
        with pytest.raises(grpc.RpcError) as expired:
            hasty.upsert([batch])
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        started = time.perf_counter()
        acme.upsert([text_documents("after", 1)])  # queued behind the abandoned work, had it run on
        waited_s = time.perf_counter() - started
        assert waited_s < 0.25 * per_document_s * len(batch), (waited_s, per_document_s)
        assert {h.external_id.split("-")[0] for h in acme.search("river mill bridge", k=100).hits} == {"warm", "after"}


def test_sigterm_under_load_ends_in_flight_work_and_exits_within_10_s(tmp_path: Path, model_cache_dir: Path) -> None:
    with ServerProcess(tmp_path / "data", {"cache_dir": model_cache_dir, "warm_up": False}) as server:
        with Client(server.address, server.admin_key) as admin:
            admin.create_tenant("acme")
            key = admin.create_api_key("acme").api_key
        outcome: dict[str, object] = {}

        def ingest() -> None:
            with Client(server.address, key) as acme:
                try:
                    acme.upsert([text_documents("big", 400)])
                    outcome["code"] = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    outcome["code"] = exc.code()

        ingestion = threading.Thread(target=ingest)
        ingestion.start()
        time.sleep(3.0)  # well into the batch's KV prefills
        signalled = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        returncode = server.process.wait(timeout=30)
        exited_s = time.perf_counter() - signalled
        ingestion.join(timeout=30)
    assert exited_s < 10.0 and returncode == 0, (exited_s, returncode)
    assert outcome["code"] == grpc.StatusCode.UNAVAILABLE


def test_shutdown_stops_a_running_compaction_at_its_next_step(tmp_path: Path, monkeypatch) -> None:
    """A background compaction moving one blob a step (hundreds of fsynced steps) is cut short
    soon after the server starts stopping; what it leaves reads back whole, and the next
    compaction finishes the work."""
    monkeypatch.setattr(compaction, "COPY_BATCH_BYTES", 1)
    config = StoreConfig(path=tmp_path / "store", dim=8, max_segment_bytes=64 << 10)
    segments = config.path / "segments"
    with Store(config) as store:
        store.create_tenant("alice")
        docs = {f"d{i}": canary(f"d{i}", i) for i in range(400)}
        for start in range(0, len(docs), 50):
            store.upsert("alice", [docs[f"d{i}"] for i in range(start, start + 50)])
        gone = [f"d{i}" for i in range(0, len(docs), 2)]
        store.delete_documents("alice", gone)
        files_before = set(segments.glob("*.seg"))
        stopping = threading.Event()
        compactor = Compactor(store, stopping)
        compactor.compact_in_background()
        while set(segments.glob("*.seg")) == files_before:  # the first copies are written: it runs
            time.sleep(0.001)
        stopping.set()
        started = time.perf_counter()
        compactor.join()
        joined_s = time.perf_counter() - started
        assert joined_s < 1.0, joined_s
        assert files_holding(config.path, {"kv": docs[gone[-1]].chunks[0].kv_blob}), "the compaction ran to its end"
        kept = [name for name in docs if name not in gone]
        for chunk_id, name in zip(store.document_chunk_ids("alice", kept).tolist(), kept):
            assert store.read_kv(chunk_id) == docs[name].chunks[0].kv_blob
        Compactor(store, threading.Event()).compact()
        for name in gone:
            assert files_holding(config.path, {"kv": docs[name].chunks[0].kv_blob}) == {}
