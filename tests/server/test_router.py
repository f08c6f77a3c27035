"""The router's choices over WorkerStates set by hand (cold chunks go home, held KV wins, load is
bounded, down and tried workers are skipped); then real `tenantkv worker` processes on 127.0.0.1:
ingestion and answers go through them, a question goes where its chunks' KV already is, a killed
worker fails over and is re-admitted, and an answer through a remote worker is the in-process
worker's, token for token."""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from client.api import Client, DocumentText
from server.app import ServerThread
from server.config import ServerConfig
from server.process import WorkerProcess, free_ports
from server.router import MAX_LOAD_GAP, Reason, Router, WorkerState, home
from server.workers import RemoteWorker
from store.errors import Unavailable
from worker.blend import PrefillMode
from worker.engine import Engine, EngineConfig
from worker.node import ChunkRef, GenerateJob, WorkerNode

TOPICS = {
    "volcano": "Volcanoes form where magma reaches the surface. Mount Etna in Sicily erupts often and is one of the most active volcanoes in Europe.",
    "bees": "Honey bees live in colonies with one queen. Worker bees collect nectar and pollen, and they communicate by dancing.",
    "comet": "Halley's Comet returns about every 76 years. Its last visit to the inner solar system was in 1986 and the next is expected in 2061.",
    "violin": "A violin has four strings tuned in fifths. Antonio Stradivari built some of the most famous violins in Cremona.",
}
QUESTIONS = {
    "volcano": "Which volcano in Sicily erupts often?",
    "bees": "How do honey bees communicate?",
    "comet": "When will Halley's Comet return?",
    "violin": "Where did Stradivari build violins?",
}


NAMES = ["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"]  # never called: choosing needs no worker to answer


def router(names: list[str]) -> Router:
    """A locality router whose workers are all up, as a status poll would leave them."""
    routed = Router([RemoteWorker(name) for name in names])
    for worker in routed.workers:
        worker.up = True
    return routed


def job(chunks: dict[str, int]) -> GenerateJob:
    """A question over chunks named by KV key, with their token counts."""
    refs = [ChunkRef(i, key, np.zeros(tokens, np.int32), stored=True) for i, (key, tokens) in enumerate(chunks.items())]
    return GenerateJob(refs, "why?", PrefillMode.BLEND, 8)


def named(routed: Router, name: str) -> WorkerState:
    return next(w for w in routed.workers if w.handle.name == name)


def homed_on(name: str, names: list[str], count: int = 1) -> list[str]:
    """The first `count` KV keys whose home among `names` is `name`."""
    return [key for key in (f"kv/{i}" for i in range(1000)) if home(key, names) == name][:count]


def test_cold_requests_go_to_the_least_loaded_and_among_equals_to_their_home() -> None:
    names = NAMES[:2]
    routed = router(names)
    chosen = []
    for i in range(40):
        key = f"kv/{i}"
        worker, reason = routed.choose(job({key: 100}))
        assert reason is Reason.LOAD and worker.handle.name == home(key, names)
        chosen.append(worker.handle.name)
    assert all(10 <= chosen.count(name) <= 30 for name in names)  # equal loads: the workers split the keys
    named(routed, names[0]).in_flight = 1
    assert routed.choose(job({homed_on(names[0], names)[0]: 100})) == (named(routed, names[1]), Reason.LOAD)


def test_a_cold_request_goes_to_the_home_of_most_of_its_tokens() -> None:
    names = NAMES[:2]
    routed = router(names)
    small, large = homed_on(names[0], names)[0], homed_on(names[1], names)[0]
    assert routed.choose(job({small: 100, large: 300}))[0].handle.name == names[1]
    assert routed.choose(job({small: 300, large: 100}))[0].handle.name == names[0]


def test_a_request_goes_to_the_worker_holding_most_of_its_tokens() -> None:
    names = NAMES[:2]
    routed = router(names)
    first, second = named(routed, names[0]), named(routed, names[1])
    small, large = homed_on(names[0], names, 2)
    first.held.add(small)
    second.held.add(large)
    second.in_flight = 2  # more loaded, away from home: holding the KV wins while within the bound
    assert routed.choose(job({small: 100, large: 300})) == (second, Reason.LOCALITY)
    assert routed.choose(job({small: 300, large: 100})) == (first, Reason.LOCALITY)
    first.held.add(large)  # both hold it: the less loaded, then the home, serves it
    assert routed.choose(job({large: 100})) == (first, Reason.LOCALITY)
    second.in_flight = 0
    assert routed.choose(job({large: 100})) == (first, Reason.LOCALITY)
    first.in_flight = 1
    assert routed.choose(job({large: 100})) == (second, Reason.LOCALITY)


def test_load_beyond_the_gap_or_ratio_goes_to_the_least_loaded() -> None:
    names = NAMES[:2]
    routed = router(names)
    key = homed_on(names[0], names)[0]
    preferred, other = named(routed, names[0]), named(routed, names[1])
    preferred.held.add(key)
    preferred.in_flight = MAX_LOAD_GAP - 1  # one more reaches the gap, not beyond it
    assert routed.choose(job({key: 100})) == (preferred, Reason.LOCALITY)
    preferred.in_flight = MAX_LOAD_GAP
    assert routed.choose(job({key: 100})) == (other, Reason.OVERLOAD)
    other.in_flight, preferred.queue_depth = 10, 19  # the worker's own queue counts too; within twice the least loaded
    assert routed.choose(job({key: 100})) == (preferred, Reason.LOCALITY)
    preferred.queue_depth = 20
    assert routed.choose(job({key: 100})) == (other, Reason.OVERLOAD)


def test_a_down_or_tried_worker_is_never_chosen_and_only_its_chunks_move() -> None:
    routed = router(NAMES)
    keys = [f"kv/{i}" for i in range(60)]
    homes = {key: home(key, NAMES) for key in keys}
    down = named(routed, NAMES[0])
    down.held.update(keys)
    routed.mark_down(down, Unavailable("gone"))
    for key in keys:
        worker, reason = routed.choose(job({key: 100}))
        assert worker is not down and reason is Reason.LOAD
        if homes[key] != NAMES[0]:
            assert worker.handle.name == homes[key]
    worker, _ = routed.choose(job({keys[0]: 100}))
    assert routed.choose(job({keys[0]: 100}), frozenset({id(worker)}))[0] not in (worker, down)
    with pytest.raises(Unavailable):
        routed.choose(job({keys[0]: 100}), frozenset(id(w) for w in routed.workers if w is not down))


def test_a_request_without_chunks_goes_to_the_least_loaded() -> None:
    routed = router(NAMES[:2])
    named(routed, NAMES[0]).in_flight = 1
    assert routed.choose(job({})) == (named(routed, NAMES[1]), Reason.LOAD)


@dataclass
class Fleet:
    server: ServerThread
    admin: Client
    alice: Client
    workers: list[WorkerProcess]

    def state(self, worker: WorkerProcess) -> WorkerState:
        return next(w for w in self.server.server.runtime.router.workers if w.handle.name == worker.address)

    def wait_until(self, condition, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)


def ask(client: Client, question: str, max_new_tokens: int = 8) -> list[int]:
    replies = list(client.ask(question, k=1, max_new_tokens=max_new_tokens))
    return [r.token.token_id for r in replies if r.HasField("token")]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, model_cache_dir, models):
    ports = free_ports(2)
    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("fleet") / "data", port=0, cache_dir=model_cache_dir, warm_up=False,
        workers=",".join(f"127.0.0.1:{port}" for port in ports),
    )
    with ServerThread(config, models) as server, Client(server.address, config.admin_key_path.read_text().strip()) as admin:
        key = admin.create_api_key(worker=True).api_key
        workers = [WorkerProcess(server.address, key, port=port, cache_dir=model_cache_dir) for port in ports]
        try:
            for worker in workers:
                worker.start()
            admin.create_tenant("alice")
            with Client(server.address, admin.create_api_key("alice").api_key) as alice:
                running = Fleet(server, admin, alice, workers)
                running.wait_until(lambda: all(running.state(w).up for w in workers))
                alice.upsert([[DocumentText(external_id=name, text=text) for name, text in TOPICS.items()]])
                yield running
        finally:
            for worker in workers:
                if worker.process is not None and worker.process.poll() is None:
                    worker.kill()


def test_ingestion_ran_on_the_workers_and_every_chunk_has_kv(fleet: Fleet) -> None:
    hits = fleet.alice.search("volcano in Sicily", k=4).hits
    assert hits[0].external_id == "volcano" and len(hits) == len(TOPICS)
    assert set(fleet.alice.fetch_kv([h.chunk_id for h in hits])) == {h.chunk_id for h in hits}
    assert fleet.server.server.runtime.node is None  # the server runs no model of its own


def test_an_answer_through_a_remote_worker_is_the_in_process_workers(fleet: Fleet, models) -> None:
    remote = ask(fleet.alice, QUESTIONS["comet"], max_new_tokens=12)
    runtime = fleet.server.server.runtime
    hits = runtime.indexed_store.search("alice", runtime.embed_query(QUESTIONS["comet"]), 1)
    job, _ = runtime.generate_job("alice", hits, QUESTIONS["comet"], PrefillMode.BLEND, 12)
    local = WorkerNode(models.llm, models.embedder, Engine(models.llm, EngineConfig()))
    try:
        assert local.engine.kv_fingerprint == runtime.router.kv_fingerprint
        assert remote == [t.token_id for t in local.generate(job, runtime.stored_kv).tokens]
    finally:
        local.close()


def test_a_question_goes_to_the_worker_that_holds_its_chunks(fleet: Fleet) -> None:
    router = fleet.server.server.runtime.router
    served = {}
    for topic in ("volcano", "bees"):
        before = {w.address: fleet.state(w).requests for w in fleet.workers}
        ask(fleet.alice, QUESTIONS[topic])
        served[topic] = next(w for w in fleet.workers if fleet.state(w).requests > before[w.address])
    time.sleep(1.5)  # a few status polls: what each worker holds now comes from its own cache events
    volcano_key = fleet.server.server.runtime.indexed_store.search("alice", fleet.server.server.runtime.embed_query(TOPICS["volcano"]), 1)[0].chunk.kv_key
    assert volcano_key in fleet.state(served["volcano"]).held
    locality_before = router.decisions[Reason.LOCALITY]
    hits_before = fleet.state(served["volcano"]).cache_hits
    ask(fleet.alice, QUESTIONS["volcano"])
    assert router.decisions[Reason.LOCALITY] == locality_before + 1
    assert fleet.state(served["volcano"]).cache_hits == hits_before + 1


def test_a_killed_worker_fails_over_and_is_readmitted(fleet: Fleet) -> None:
    """The worker holding the violin chunk streams a long answer and has a second question waiting
    (locality sends both there) when it is SIGKILLed: the stream ends UNAVAILABLE, the waiting
    question is answered by the other worker, and the dead one is re-admitted once it is back."""
    ask(fleet.alice, QUESTIONS["violin"])
    holder = next(w for w in fleet.workers if _holds(fleet, w, "violin"))
    other = next(w for w in fleet.workers if w is not holder)
    answered_before = fleet.state(other).requests

    stream = fleet.alice.ask(QUESTIONS["violin"] + " Then count from 1 to 300, separated by commas.", k=1, max_new_tokens=300)
    assert next(r for r in stream if r.HasField("token"))
    assert fleet.state(holder).in_flight == 1
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ask, fleet.alice, QUESTIONS["violin"])
        fleet.wait_until(lambda: fleet.state(holder).in_flight == 2)
        holder.kill()
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "stopped mid-answer" in err.value.details()
        assert waiting.result()  # it had not streamed: retried on the other worker
    assert fleet.state(other).requests == answered_before + 1
    assert not fleet.state(holder).up and fleet.state(other).up
    assert fleet.alice.search("bees", k=1).hits  # the server keeps serving

    holder.start()
    fleet.wait_until(lambda: fleet.state(holder).up)
    assert ask(fleet.alice, QUESTIONS["bees"])


def _holds(fleet: Fleet, worker: WorkerProcess, topic: str) -> bool:
    runtime = fleet.server.server.runtime
    key = runtime.indexed_store.search("alice", runtime.embed_query(TOPICS[topic]), 1)[0].chunk.kv_key
    return key in fleet.state(worker).held
