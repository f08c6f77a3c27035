"""Prometheus metrics: calls per RPC and status, their latency, calls per tenant, the runtime's sizes, and the workers.

Counters and the latency histogram are updated by the interceptor as calls finish. Sizes (index
vectors, bytes on disk, tenants), each tenant's KV economics as the store records them (KV bytes
stored, bytes deduplication saved, evictions under its budget) and as its answers met them (chunks
whose KV was a hit, misses by cause, seconds recomputing misses), and each worker's figures as the
router keeps them (up, load, KV cache hits and misses, bytes fetched from the store, routing
decisions by reason) are read when Prometheus scrapes, so they cost nothing between scrapes.
"""

import time
from pathlib import Path
from typing import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, runtime: Callable[[], object | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tenantkv_requests", "RPCs finished, by method and status code", ["method", "code"], registry=self.registry)
        self.latency = Histogram("tenantkv_request_seconds", "RPC latency, by method", ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tenant_requests = Counter("tenantkv_tenant_requests", "RPCs finished, by calling tenant", ["tenant"], registry=self.registry)
        self.registry.register(_RuntimeCollector(runtime))
        self._http = None
        # Each label set's series, looked up once: labels() takes a lock and builds a key every call.
        self._by_outcome: dict[tuple[str, grpc.StatusCode], tuple[Counter, Histogram]] = {}
        self._by_tenant: dict[str, Counter] = {}

    def observe(self, method: str, code: grpc.StatusCode, tenant: str | None, started: float) -> None:
        series = self._by_outcome.get((method, code))
        if series is None:
            series = self._by_outcome[(method, code)] = (self.requests.labels(method, code.name), self.latency.labels(method))
        requests, latency = series
        requests.inc()
        latency.observe(time.perf_counter() - started)
        if tenant is not None:
            tenant_requests = self._by_tenant.get(tenant)
            if tenant_requests is None:
                tenant_requests = self._by_tenant[tenant] = self.tenant_requests.labels(tenant)
            tenant_requests.inc()

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP (port 0: any free one); returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _RuntimeCollector(Collector):
    def __init__(self, runtime: Callable[[], object | None]) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator:
        runtime = self._runtime()
        if runtime is None:  # still loading
            return
        yield GaugeMetricFamily("tenantkv_index_vectors", "Vectors in the tenant index", value=len(runtime.indexed_store.index))
        yield CounterMetricFamily("tenantkv_index_training_failures", "Index trainings that failed; the index kept its previous tree", value=runtime.indexed_store.training_failures)
        yield GaugeMetricFamily("tenantkv_index_zeroed_vectors", "Stored vectors found zero or not finite at start, indexed as zeros", value=runtime.indexed_store.zeroed_vectors)
        yield GaugeMetricFamily("tenantkv_tenants", "Tenants in the store", value=runtime.store.count_tenants())
        yield GaugeMetricFamily("tenantkv_store_disk_bytes", "Bytes of the store on disk (LMDB and KV segments)", value=_disk_bytes(runtime.store.config.path))
        yield from _tenant_kv_metrics(runtime.store)
        yield from _kv_answer_metrics(runtime.kv_ledger.snapshot())
        yield from _worker_metrics(runtime.router)


def _tenant_kv_metrics(store) -> Iterator:
    """Per tenant, from the tenant records (one scan): what its budget and sharing group did."""
    families = {
        "stored_bytes": GaugeMetricFamily("tenantkv_kv_stored_bytes", "KV blob bytes the tenant is charged for (each blob it refers to, in full)", labels=["tenant"]),
        "dedup_saved_bytes": CounterMetricFamily("tenantkv_kv_dedup_saved_bytes", "KV bytes the tenant's writes referred to that were stored already (its own or its sharing group's)", labels=["tenant"]),
        "evictions": CounterMetricFamily("tenantkv_kv_evictions", "KV blobs the tenant lost to its byte budget", labels=["tenant"]),
        "evicted_bytes": CounterMetricFamily("tenantkv_kv_evicted_bytes", "KV bytes the tenant lost to its byte budget", labels=["tenant"]),
    }
    for usage in store.kv_usage():
        for attribute, family in families.items():
            family.add_metric([usage.tenant], float(getattr(usage, attribute)))
    yield from families.values()


def _kv_answer_metrics(ledger: dict) -> Iterator:
    """Per tenant asking, since start: its retrieved chunks' KV found in the store or missed, and why."""
    hits = CounterMetricFamily("tenantkv_kv_hits", "Chunks retrieved for the tenant's answers whose KV the store held", labels=["tenant"])
    misses = CounterMetricFamily("tenantkv_kv_misses", "Chunks retrieved for the tenant's answers whose KV the store lacked, by cause", labels=["tenant", "cause"])
    recompute = CounterMetricFamily("tenantkv_kv_recompute_seconds", "Seconds workers spent computing the KV of the tenant's misses", labels=["tenant"])
    kept = CounterMetricFamily("tenantkv_kv_kept_on_miss", "Misses whose computed KV the tenant's policy handed to the store", labels=["tenant"])
    for tenant, counters in ledger.items():
        hits.add_metric([tenant], counters.hits)
        for cause, count in counters.misses.items():
            misses.add_metric([tenant, cause.value], count)
        recompute.add_metric([tenant], counters.recompute_s)
        kept.add_metric([tenant], counters.kept)
    yield from (hits, misses, recompute, kept)


def _worker_metrics(router) -> Iterator:
    families = {
        "up": GaugeMetricFamily("tenantkv_worker_up", "1 while the router counts the worker as up", labels=["worker"]),
        "in_flight": GaugeMetricFamily("tenantkv_worker_in_flight", "Calls the router has sent the worker that have not ended", labels=["worker"]),
        "queue_depth": GaugeMetricFamily("tenantkv_worker_queue_depth", "Requests waiting for the worker's model, at its last status", labels=["worker"]),
        "requests": CounterMetricFamily("tenantkv_worker_requests", "Answers the worker accepted", labels=["worker"]),
        "cache_hits": CounterMetricFamily("tenantkv_kv_cache_hits", "Retrieved chunks whose KV was in the worker's memory", labels=["worker"]),
        "cache_misses": CounterMetricFamily("tenantkv_kv_cache_misses", "Retrieved chunks whose KV the worker fetched or computed", labels=["worker"]),
        "fetched_bytes": CounterMetricFamily("tenantkv_worker_fetched_bytes", "Chunk KV bytes the worker fetched from the store", labels=["worker"]),
    }
    for worker in router.workers:
        name = worker.handle.name
        for attribute, family in families.items():
            family.add_metric([name], float(getattr(worker, attribute)))
    yield from families.values()
    decisions = CounterMetricFamily("tenantkv_routing_decisions", "Where the router sent answers, by reason", labels=["reason"])
    for reason, count in router.decisions.items():
        decisions.add_metric([reason.value], count)
    yield decisions


def _disk_bytes(path: Path) -> int:
    """Allocated bytes: LMDB's file is as long as its map but sparse."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())
