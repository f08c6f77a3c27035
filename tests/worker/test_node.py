"""A worker fetches each chunk's stored KV once across concurrent requests: the others wait for that fetch.

Real server and store; the worker fetches as a remote worker does (`StoreKV`, a worker key and the
router's capability), each call recorded at that fetcher. Requests are ordered by events (a fetch
held at its start until the test lets it go), not by timing.
"""

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from client.api import Client
from server.runtime import Runtime
from tests.server.conftest import unit_vectors, vector_documents
from worker.blend import PrefillMode
from worker.engine import Engine, EngineConfig
from worker.node import GenerateJob, Generation, KVFetcher, WorkerNode
from worker.store_kv import StoreKV

QUESTION = "Which passage is this?"
WAIT_S = 60  # only a bound on a hang; the order comes from events


@dataclass
class Fetches:
    """The store's fetcher for a worker key, recording each call's (request name, chunk ids) in call order."""

    store: StoreKV
    calls: list[tuple[str, list[int]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fetcher(self, name: str, capability: str, started: threading.Event | None = None, go: threading.Event | None = None) -> KVFetcher:
        """Sets `started` as a call begins, then holds it until `go` is set."""
        fetch = self.store.fetcher(capability)

        def recorded(chunk_ids: list[int]) -> dict[int, bytes]:
            with self._lock:
                self.calls.append((name, sorted(chunk_ids)))
            if started is not None:
                started.set()
            if go is not None:
                assert go.wait(WAIT_S)
            return fetch(chunk_ids)

        return recorded

    def of(self, name: str) -> list[list[int]]:
        return [ids for caller, ids in self.calls if caller == name]


@dataclass
class Stored:
    """Three one-chunk passages of tenant alice with stored KV, and the router's jobs over them."""

    runtime: Runtime
    vectors: np.ndarray
    fetches: Fetches
    blob_bytes: dict[int, int]  # chunk id -> its stored blob's size

    def job(self, *passages: int) -> tuple[GenerateJob, str]:
        hits = [self.runtime.indexed_store.search("alice", self.vectors[p], k=1)[0] for p in passages]
        job, capability = self.runtime.generate_job("alice", hits, QUESTION, PrefillMode.BLEND, 1)
        assert all(c.stored for c in job.chunks)
        return job, capability

    def chunk(self, passage: int) -> int:
        return self.job(passage)[0].chunks[0].chunk_id


@pytest.fixture
def stored(server, admin):
    admin.create_tenant("alice")
    vectors = unit_vectors(3, seed=41)
    with Client(server.address, admin.create_api_key("alice").api_key) as alice:
        alice.upsert([vector_documents("p", vectors)])
    with Client(server.address, admin.create_api_key(worker=True).api_key) as worker_client:
        stored = Stored(server.server.runtime, vectors, Fetches(StoreKV(worker_client)), {})
        ids = [stored.chunk(p) for p in range(3)]
        stored.blob_bytes = {i: len(blob) for i, (_, blob) in worker_client.fetch_kv(ids, stored.job(0, 1, 2)[1]).items()}
        yield stored


@pytest.fixture
def node(models):
    node = WorkerNode(models.llm, models.embedder, Engine(models.llm, EngineConfig()))
    yield node
    node.close()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


def test_two_concurrent_requests_for_a_chunk_fetch_it_once(stored: Stored, node: WorkerNode, pool: ThreadPoolExecutor) -> None:
    x, y = stored.chunk(0), stored.chunk(1)
    (job_a, cap_a), (job_b, cap_b) = stored.job(0), stored.job(0, 1)
    a_started, a_go, b_started = threading.Event(), threading.Event(), threading.Event()
    a = pool.submit(node.generate, job_a, stored.fetches.fetcher("a", cap_a, a_started, a_go))
    assert a_started.wait(WAIT_S)
    b = pool.submit(node.generate, job_b, stored.fetches.fetcher("b", cap_b, b_started))
    assert b_started.wait(WAIT_S)  # b began its loads before fetching: chunk x joined a's fetch, held
    assert not a.done()
    a_go.set()
    first, second = a.result(WAIT_S), b.result(WAIT_S)

    assert stored.fetches.calls == [("a", [x]), ("b", [y])]
    assert (first.cache_hits, first.fetched_chunks, first.fetched_bytes) == (0, 1, stored.blob_bytes[x])
    assert (second.cache_hits, second.fetched_chunks, second.fetched_bytes) == (1, 1, stored.blob_bytes[y])
    status = node.status(0)
    assert (status.cache_hits, status.cache_misses, status.fetched_bytes) == (1, 2, stored.blob_bytes[x] + stored.blob_bytes[y])

    assert list(second.tokens) and second.computed == []  # x's KV came from a's blob, not computed
    assert list(first.tokens) and first.computed == []
    third = node.generate(stored.job(0, 1)[0], stored.fetches.fetcher("c", ""))
    assert third.cache_hits == 2 and stored.fetches.of("c") == []
    third.tokens.close()


def test_a_failing_fetch_wakes_every_waiter_and_each_fetches_for_itself(stored: Stored, node: WorkerNode, pool: ThreadPoolExecutor) -> None:
    x, y, z = (stored.chunk(p) for p in range(3))
    a_started, a_go = threading.Event(), threading.Event()
    a = pool.submit(node.generate, stored.job(0)[0], stored.fetches.fetcher("a", "", a_started, a_go))  # no capability: PERMISSION_DENIED
    assert a_started.wait(WAIT_S)
    waiters: dict[str, Future[Generation]] = {}
    for name, other in [("b", 1), ("c", 2)]:
        started = threading.Event()
        job, capability = stored.job(0, other)
        waiters[name] = pool.submit(node.generate, job, stored.fetches.fetcher(name, capability, started))
        assert started.wait(WAIT_S)  # joined a's fetch of x
    assert not a.done()
    a_go.set()

    failed = a.result(WAIT_S)
    assert (failed.cache_hits, failed.fetched_chunks, failed.fetched_bytes) == (0, 0, 0)
    for name, own in [("b", y), ("c", z)]:
        generation = waiters[name].result(WAIT_S)
        assert stored.fetches.of(name) == [[own], [x]]
        assert (generation.cache_hits, generation.fetched_chunks) == (0, 2)
        generation.tokens.close()
    failed.tokens.close()
    assert node.status(0).cache_misses == 5


def test_a_fetched_chunk_is_joined_until_its_request_ends_then_fetched_anew(stored: Stored, node: WorkerNode) -> None:
    x = stored.chunk(0)
    job, capability = stored.job(0)
    first = node.generate(job, stored.fetches.fetcher("first", capability))
    joined = node.generate(job, stored.fetches.fetcher("joined", capability))  # first's blob is not decoded yet
    assert joined.cache_hits == 1 and stored.fetches.of("joined") == []
    first.tokens.close()  # cancelled before its prefill: nothing put
    joined.tokens.close()
    later = node.generate(job, stored.fetches.fetcher("later", capability))
    assert later.cache_hits == 0 and stored.fetches.of("later") == [[x]]
    later.tokens.close()
