"""Work stops when its caller goes, and so does the server: a cancelled Upsert's model work ends at
its next chunk, and SIGTERM ends in-flight work with UNAVAILABLE and exits within 10 s."""

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from client.api import Client, DocumentText
from server.process import ServerProcess

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
