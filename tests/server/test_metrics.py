"""The Prometheus endpoint of a real server: call counts by method, status and tenant, and runtime sizes."""

import time
import urllib.request
from dataclasses import replace

import grpc
import pytest

from server.app import ServerThread
from client.api import Client
from tests.server.conftest import unit_vectors, vector_documents


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_calls_and_report_sizes(server_config, models) -> None:
    config = replace(server_config, metrics_port=0)
    with ServerThread(config, models) as running, Client(running.address, config.admin_key_path.read_text().strip()) as admin:
        admin.create_tenant("acme")
        with Client(running.address, admin.create_api_key("acme").api_key) as acme:
            acme.upsert([vector_documents("a", unit_vectors(3, seed=1))])
            acme.search(unit_vectors(1, seed=2)[0], k=2)
            with pytest.raises(grpc.RpcError):
                acme.search(unit_vectors(1, seed=2)[0], k=0)
        samples = scrape(running.server.metrics_port)
    assert samples['tenantkv_requests_total{code="OK",method="/tenantkv.v1.Retrieval/Search"}'] == 1
    assert samples['tenantkv_requests_total{code="INVALID_ARGUMENT",method="/tenantkv.v1.Retrieval/Search"}'] == 1
    assert samples['tenantkv_tenant_requests_total{tenant="acme"}'] == 3
    assert samples['tenantkv_request_seconds_count{method="/tenantkv.v1.Ingest/Upsert"}'] == 1
    assert samples["tenantkv_index_vectors"] == 3 and samples["tenantkv_tenants"] == 1
    assert samples["tenantkv_store_disk_bytes"] > 0 and samples['tenantkv_worker_up{worker="in-process"}'] == 1
    assert 'tenantkv_kv_cache_hits_total{worker="in-process"}' in samples


def test_a_call_the_client_cancels_counts_as_cancelled(server_config, models) -> None:
    config = replace(server_config, metrics_port=0)
    method = 'tenantkv_requests_total{code="CANCELLED",method="/tenantkv.v1.Retrieval/RetrieveAndGenerate"}'
    with ServerThread(config, models) as running, Client(running.address, config.admin_key_path.read_text().strip()) as admin:
        admin.create_tenant("acme")
        with Client(running.address, admin.create_api_key("acme").api_key) as acme:
            acme.upsert([vector_documents("a", unit_vectors(2, seed=1))])
            call = acme.ask("Which passage is it?", k=1, max_new_tokens=200)
            next(call)  # the chunks used: the handler is running
            call.cancel()
        deadline = time.monotonic() + 30
        while method not in (samples := scrape(running.server.metrics_port)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the cancellation reaches the server's handler asynchronously
    assert samples.get(method) == 1
    assert not any("RetrieveAndGenerate" in name and 'code="OK"' in name for name in samples)
