"""The scheduler loop: batched answers equal answers alone, fair turns between tenants, cancellation,
ingestion below questions, and its configuration. Order of events, never timing."""

import threading
import time

import numpy as np
import pytest
import torch

from worker.blend import PrefillMode
from worker.engine import Engine, EngineConfig, RetrievedChunk
from worker.generate import Greedy
from worker.llama import run_steps
from worker.errors import RequestCancelled
from worker.decode_graphs import StaticDecode
from worker.scheduler import Scheduler, SchedulerConfig, StepReport, decoder_for

PASSAGES = [
    "The Seine flows through Paris and into the English Channel at Le Havre.",
    "Rome is the capital of Italy. The Tiber runs through the city, past the Vatican.",
    "Mount Kilimanjaro in Tanzania is the highest mountain in Africa, 5,895 metres above sea level.",
]


@pytest.fixture(scope="module")
def engine(models) -> Engine:
    engine = Engine(models.llm, EngineConfig())
    yield engine
    engine.close()


def chunks_of(engine: Engine, texts: list[str], precomputed: bool = True) -> list[RetrievedChunk]:
    ids = [np.asarray(engine.llm.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    blobs = engine.encode_chunks_kv(ids) if precomputed else [None] * len(ids)
    return [RetrievedChunk(100 + i, x, lambda b=b: b, cache_key=f"test-{i}-{precomputed}") for i, (x, b) in enumerate(zip(ids, blobs))]


def alone(engine: Engine, chunks, question: str, mode: PrefillMode, max_new_tokens: int) -> tuple[list[int], list[float]]:
    """The request run by itself, one token a forward pass: its tokens and each step's gap between the top two logits."""
    prefill = run_steps(engine.prefill_steps(chunks, question, mode, max_new_tokens))
    greedy, logits, kv = Greedy(engine.llm, max_new_tokens, prefill.kv.length, 0.0), prefill.logits, prefill.kv
    tokens, gaps = [], []
    while not greedy.done:
        top = logits.float().topk(2).values
        gaps.append(float(top[0] - top[1]))
        token = greedy.push(int(logits.argmax()))
        if token is None:
            break
        tokens.append(token.token_id)
        logits = engine.llm.forward.forward(torch.tensor([token.token_id]), kv)[-1]
    return tokens, gaps


def assert_same_up_to_near_ties(got: list[int], expected: list[int], gaps: list[float]) -> None:
    """Equal tokens until the first step where the lone run's top two logits lie within 1e-4 (a near-tie may flip)."""
    tie = next((i for i, gap in enumerate(gaps) if gap <= 1e-4), len(gaps))
    assert got[:tie] == expected[:tie]
    if tie == len(gaps):
        assert got == expected


def run_until_done(scheduler: Scheduler, limit: int = 400) -> list[StepReport]:
    reports = []
    while scheduler.active_count or scheduler.waiting_count:
        reports.append(scheduler.step())
        assert len(reports) < limit
    return reports


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "padded"])
def test_batched_answers_equal_answers_alone(engine: Engine, padded: bool) -> None:
    """Mixed prompt lengths and modes, some arriving while others decode, through one manual
    scheduler; also through the GPU's padded decode step (worker.decode_graphs), run eagerly here."""
    decoder = StaticDecode(engine.llm.forward, 4) if padded else None
    scheduler = Scheduler(engine.llm, SchedulerConfig(max_batch_size=4, step_tokens=256), decoder)
    cases = [
        (chunks_of(engine, PASSAGES[:1]), "Which river flows through Paris?", PrefillMode.BLEND),
        (chunks_of(engine, PASSAGES), "What is the highest mountain in Africa?", PrefillMode.FULL_PREFILL),
        (chunks_of(engine, PASSAGES[1:], precomputed=False), "What is the capital of Italy?", PrefillMode.BLEND),
        (chunks_of(engine, PASSAGES[:2]), "Where does the Seine end?", PrefillMode.FULL_REUSE),
        ([], "Say hello.", PrefillMode.BLEND),
    ]
    streams, reports = [], []
    for i, (chunks, question, mode) in enumerate(cases):
        stream = scheduler.request(f"t{i % 2}", engine.prefill_steps(chunks, question, mode, 10), 10, time.perf_counter())
        stream.start()
        streams.append(stream)
        for _ in range(3):  # the next request arrives mid-decode of the earlier ones
            reports.append(scheduler.step())
    reports += run_until_done(scheduler)
    assert max(len(r.decoded) for r in reports) >= 2  # batches really formed
    for stream, (chunks, question, mode) in zip(streams, cases):
        expected, gaps = alone(engine, chunks, question, mode, 10)
        assert_same_up_to_near_ties([t.token_id for t in stream], expected, gaps)


def test_a_short_request_waits_for_at_most_one_chunk_of_a_long_prefill(engine: Engine) -> None:
    scheduler = Scheduler(engine.llm, SchedulerConfig(max_batch_size=4, step_tokens=64))
    long_question = "Summarise everything you know about rivers. " * 60  # ~600 tokens, ~10 steps of budget
    long = scheduler.request("big", engine.prefill_steps([], long_question, PrefillMode.FULL_PREFILL, 2), 2, 0.0)
    long.start()
    first = scheduler.step()
    assert set(first.prefilled) == {long.request_id} and not first.started  # cut: not all in one step
    short = scheduler.request("small", engine.prefill_steps([], "Hi?", PrefillMode.BLEND, 2), 2, 0.0)
    short.start()
    waited = []
    while True:
        report = scheduler.step()
        prefilled = list(report.prefilled)
        ahead = prefilled[: prefilled.index(short.request_id)] if short.request_id in prefilled else prefilled
        waited.append(long.request_id in ahead)  # a chunk of the long prefill ran while the short one waited
        if short.request_id in report.started:
            break
    assert sum(waited) <= 1
    reports = run_until_done(scheduler)
    assert long.request_id in [i for r in reports for i in r.started]
    assert len(list(short)) == 2 and len(list(long)) == 2


def test_tenants_are_admitted_round_robin(engine: Engine) -> None:
    """Tenant a queues three requests before b and c queue one each: b and c get slots before a's second."""
    scheduler = Scheduler(engine.llm, SchedulerConfig(max_batch_size=1, step_tokens=4096))
    order = []
    streams = {}
    for tenant, n in (("a", 3), ("b", 1), ("c", 1)):
        for i in range(n):
            stream = scheduler.request(tenant, engine.prefill_steps([], f"Count to {i + 1}.", PrefillMode.BLEND, 1), 1, 0.0)
            stream.start()
            streams[stream.request_id] = (tenant, stream)  # kept: a stream dropped is a stream cancelled
    for report in run_until_done(scheduler):
        order += [streams[i][0] for i in report.started]
    assert order == ["a", "b", "c", "a", "a"]


def test_a_cancelled_request_frees_its_slot_at_the_next_step(engine: Engine) -> None:
    scheduler = Scheduler(engine.llm, SchedulerConfig(max_batch_size=1, step_tokens=4096))
    first = scheduler.request("a", engine.prefill_steps([], "Tell me a long story.", PrefillMode.BLEND, 50), 50, 0.0)
    second = scheduler.request("b", engine.prefill_steps([], "Say yes.", PrefillMode.BLEND, 3), 3, 0.0)
    first.start()
    second.start()
    assert first.request_id in scheduler.step().started
    assert scheduler.step().decoded == (first.request_id,)  # the only slot is taken: the second waits
    assert scheduler.waiting_count == 1
    next(first)
    first.close()
    report = scheduler.step()
    assert first.request_id in report.finished and second.request_id in report.started
    assert first.request_id not in report.decoded
    run_until_done(scheduler)
    assert 1 <= len(list(second)) <= 3


def test_ingestion_never_delays_a_waiting_question_by_more_than_one_step(engine: Engine) -> None:
    scheduler = Scheduler(engine.llm, SchedulerConfig(max_batch_size=2, step_tokens=64, ingest_batch_tokens=256))
    segments = [torch.from_numpy(engine.layout.chunk_segment(np.arange(1000, 1000 + n))) for n in (60, 90, 120, 30)]
    job = scheduler.ingest([engine.blender.prefill_chunks_steps([s]) for s in segments])
    assert scheduler.step().ingested_rows > 0  # ingestion alone: it takes the step
    question = scheduler.request("q", engine.prefill_steps([], "Which river?", PrefillMode.BLEND, 2), 2, 0.0)
    question.start()
    report = scheduler.step()
    assert report.prefilled and set(report.prefilled) == {question.request_id}  # the question's prefill goes first
    while question.request_id not in report.started:
        report = scheduler.step()
        assert report.prefilled  # no step until its first token is ingestion alone
    while not job.done.is_set():
        scheduler.step()
    assert [len(c.tokens) for c in job.result()] == [len(s) for s in segments]


def test_engine_answers_from_many_threads_in_tenant_turns(engine: Engine) -> None:
    """Through the engine's own loop thread: concurrent answers equal each alone; closing one stream mid-answer ends it."""
    chunks = chunks_of(engine, PASSAGES)
    questions = ["Which river flows through Paris?", "What is the capital of Italy?", "How high is Kilimanjaro?"]
    results: dict[str, list[int]] = {}

    def ask(question: str, tenant: str) -> None:
        results[question] = [t.token_id for t in engine.answer(chunks, question, PrefillMode.BLEND, 8, tenant=tenant)]

    threads = [threading.Thread(target=ask, args=(q, f"tenant-{i}")) for i, q in enumerate(questions)]
    abandoned = engine.answer(chunks, "Tell me a story.", PrefillMode.BLEND, 100, tenant="quitter")
    next(abandoned)
    for thread in threads:
        thread.start()
    abandoned.close()
    for thread in threads:
        thread.join()
    for question in questions:
        expected, gaps = alone(engine, chunks, question, PrefillMode.BLEND, 8)
        assert_same_up_to_near_ties(results[question], expected, gaps)
    assert list(abandoned) == []


def test_chunks_kv_come_back_in_call_order_and_a_cancelled_call_stops(engine: Engine) -> None:
    ids = [np.arange(500, 500 + n) for n in (40, 7, 255, 40, 100)]
    computed = engine.chunks_kv(ids)
    assert [len(c.tokens) for c in computed] == [len(engine.layout.chunk_segment(x)) for x in ids]
    torch.testing.assert_close(computed[2].kv, engine.blender.prefill_chunk(computed[2].tokens).kv, atol=1e-4, rtol=1e-4)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RequestCancelled):
        engine.chunks_kv(ids, cancel)


def test_closing_the_engine_ends_unfinished_answers(models) -> None:
    engine = Engine(models.llm, EngineConfig(scheduler=SchedulerConfig(max_batch_size=1, step_tokens=64)))
    running = engine.answer([], "Tell me a story.", PrefillMode.BLEND, 200)
    next(running)
    engine.close()
    with pytest.raises(RequestCancelled):
        list(running)
    with pytest.raises(RequestCancelled):
        next(engine.answer([], "Too late?", PrefillMode.BLEND, 2))


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 2.5}, "max_batch_size"),
        ({"step_tokens": -1}, "step_tokens"),
        ({"ingest_batch_tokens": 0}, "ingest_batch_tokens"),
        ({"max_batch_size": 64, "step_tokens": 64}, "step_tokens"),
        ({"cuda_graphs": "no"}, "cuda_graphs"),
        ({"cuda_graphs": 1}, "cuda_graphs"),
    ],
)
def test_bad_config_values_name_their_field(fields: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        SchedulerConfig(**fields)


def test_decode_steps_on_the_cpu_are_the_plain_step_and_a_padding_decoder_must_cover_the_batch(models) -> None:
    """(On a GPU, graphs replace the plain step unless turned off: tests/worker/test_decode_graphs.py.)"""
    forward = models.llm.forward  # the suite's models are on the CPU
    assert decoder_for(forward, SchedulerConfig()) is forward
    with pytest.raises(ValueError, match="^decoder: "):
        Scheduler(models.llm, SchedulerConfig(max_batch_size=8), StaticDecode(forward, 4))
