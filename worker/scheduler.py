"""One loop owns the model: continuous batching of answers, fair to every tenant, with chunk-KV
precompute (ingestion) below them.

Each step has a budget of `step_tokens` tokens of model work (vLLM v1's scheduler idea):

1. requests cancelled since the last step leave, freeing their slots and their KV;
2. waiting requests are admitted while fewer than `max_batch_size` are active: one queue per
   tenant, served round robin, and at most one request of a tenant in prefill at a time;
3. one batched decode step gives every request past its prefill its next token (their KV
   copied, once, into one `DecodeBatch`, a slot each); on a GPU it replays a CUDA graph of
   padded shapes (worker.decode_graphs; `cuda_graphs` turns that off);
4. prefills run one layer at a time while budget is left. A long prefill is cut between layers
   (chunked prefill, cut by layer rather than by token: blended prefill picks the tokens to
   recompute from all of a request's tokens at its check layer). The request served first goes
   to the back of the line when the budget runs out on it, so the next step serves another
   tenant first: a short request waits behind at most one step of a long one;
5. chunk-KV precompute gets what budget is left, one layer of one batch at a time: a waiting
   question waits for at most one step of ingestion.

Work is counted in token-layers: a decode step over n requests costs n x layers, a layer step
over r rows costs r, and a step's budget is `step_tokens` x layers. A layer step is not split,
so a step may overshoot its budget by one layer step.

`step()` is the whole policy and returns what it did (a `StepReport`), so tests follow the order
of events without timing; `start()` runs it in a thread whenever there is work.
"""

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Iterator, TypeVar

import torch

from worker.blend import Prefill
from worker.errors import RequestCancelled
from worker.generate import GeneratedToken, Greedy
from worker.decode_graphs import StaticDecode
from worker.llama import LlamaForward, Steps
from worker.llm import LLM

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_batch_size: int = 16  # requests in prefill or decode at once; more wait in their tenant's queue
    step_tokens: int = 512  # tokens of model work a step: one per decoding request, the rest for prefill and ingestion
    ingest_batch_tokens: int = 4096  # padded tokens of chunk KV computed in one pass
    cuda_graphs: bool = True  # on a GPU, decode steps replay CUDA graphs of padded shapes (worker.decode_graphs)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "step_tokens", "ingest_batch_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs: must be true or false, got {self.cuda_graphs!r}")
        if self.step_tokens <= self.max_batch_size:
            raise ValueError(
                f"step_tokens: must exceed max_batch_size ({self.max_batch_size}) so that a step with a full "
                f"decode batch still has room for a prefill, got {self.step_tokens}"
            )


@dataclass(frozen=True, slots=True)
class StepReport:
    decoded: tuple[int, ...] = ()  # requests given a token by this step's batched decode
    prefilled: tuple[int, ...] = ()  # the request of each prefill layer step, in order
    started: tuple[int, ...] = ()  # requests whose prefill ended (their first token is out)
    finished: tuple[int, ...] = ()  # requests done: budget, stop token, error or cancellation
    ingested_rows: int = 0  # chunk-KV token-layers computed
    cost: int = 0  # token-layers of model work

    @property
    def idle(self) -> bool:
        return self.cost == 0 and not self.finished


_END = object()


@dataclass(slots=True, eq=False)
class Request:
    """One answer: its prefill's steps, then greedy decoding; tokens go to `out`."""

    id: int
    tenant: str
    prefill: Steps[Prefill]
    max_new_tokens: int
    started: float  # perf_counter at the call: tokens' elapsed_s count from here
    out: queue.Queue = field(default_factory=queue.Queue)
    cancelled: bool = False
    greedy: Greedy | None = None
    last_token: int = 0


class Stream(Iterator[GeneratedToken]):
    """A request's tokens. Its work starts at the first `next` (or `start`), so a caller can still
    prepare what the prefill reads; `next` blocks and may be called from any thread; `close` cancels."""

    def __init__(self, scheduler: "Scheduler", request: Request) -> None:
        self._scheduler = scheduler
        self._request = request
        self._submitted = False
        self._done = False

    @property
    def request_id(self) -> int:
        return self._request.id

    def start(self) -> None:
        if not self._submitted:
            self._submitted = True
            self._scheduler.enqueue(self._request)

    def __next__(self) -> GeneratedToken:
        if self._done:
            raise StopIteration
        self.start()
        item = self._request.out.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._scheduler.cancel(self._request)

    def __del__(self) -> None:
        self.close()


class IngestJob(Generic[T]):
    """Chunk-KV batches run below answers; `result` blocks until all are done, in batch order."""

    def __init__(self, batches: list[Steps[list[T]]], cancel: threading.Event | None) -> None:
        self.batches = deque(batches)
        self.cancel = cancel
        self.results: list[T] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def result(self) -> list[T]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.results

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


def decoder_for(forward: LlamaForward, config: SchedulerConfig) -> LlamaForward | StaticDecode:
    """What runs the batched decode step: CUDA graphs of padded shapes on a GPU unless turned off,
    else the forward's own step (on the CPU it attends over the longest sequence, no padding)."""
    if config.cuda_graphs and forward.device.type == "cuda":
        return StaticDecode(forward, config.max_batch_size)
    return forward


class Scheduler:
    def __init__(self, llm: LLM, config: SchedulerConfig = SchedulerConfig(), decoder: LlamaForward | StaticDecode | None = None) -> None:
        """`decoder` runs the decode steps: by default `decoder_for(llm.forward, config)`; a
        StaticDecode on the CPU runs the GPU's padded step eagerly (tests)."""
        if isinstance(decoder, StaticDecode) and decoder.max_batch_size < config.max_batch_size:
            raise ValueError(f"decoder: pads to {decoder.max_batch_size} rows, fewer than max_batch_size {config.max_batch_size}")
        self.llm = llm
        self.config = config
        self._lock = threading.RLock()  # reentrant: a dropped Stream cancels itself from whatever thread collects it
        self._wake = threading.Condition(self._lock)
        self._waiting: dict[str, deque[Request]] = {}  # per tenant, each non-empty
        self._tenants: deque[str] = deque()  # tenants with waiting requests, in round-robin order
        self._prefilling: deque[Request] = deque()
        self._decoding: list[Request] = []  # the i-th decodes in slot i of `_batch`
        self.decoder = decoder or decoder_for(llm.forward, config)
        self._batch = self.decoder.new_decode_batch()
        self._ingest: deque[IngestJob] = deque()
        self._next_id = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    # ---- callers' side (any thread)

    def request(self, tenant: str, prefill: Steps[Prefill], max_new_tokens: int, started: float) -> Stream:
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
        return Stream(self, Request(request_id, tenant, prefill, max_new_tokens, started))

    def enqueue(self, request: Request) -> None:
        with self._lock:
            if self._closed:
                request.out.put(RequestCancelled("the engine is closed"))
                return
            if request.tenant not in self._waiting:
                self._waiting[request.tenant] = deque()
                self._tenants.append(request.tenant)
            self._waiting[request.tenant].append(request)
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """Stop the request: a waiting one leaves its queue now, an active one before the next step."""
        with self._lock:
            request.cancelled = True
            waiting = self._waiting.get(request.tenant)
            if waiting is not None and request in waiting:
                waiting.remove(request)
                if not waiting:
                    del self._waiting[request.tenant]
                    self._tenants.remove(request.tenant)
            self._wake.notify()

    def ingest(self, batches: list[Steps[list[T]]], cancel: threading.Event | None = None) -> IngestJob[T]:
        job = IngestJob(batches, cancel)
        with self._lock:
            if self._closed:
                raise RequestCancelled("the engine is closed")
            self._ingest.append(job)
            self._wake.notify()
        return job

    @property
    def waiting_count(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._waiting.values())

    @property
    def active_count(self) -> int:
        return len(self._prefilling) + len(self._decoding)

    # ---- the loop

    def start(self) -> None:
        """Run steps in a thread of its own whenever there is work, until `close`."""
        self._thread = threading.Thread(target=self._run, name="tenantkv-scheduler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the loop; every request and ingestion job not finished ends with RequestCancelled."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self._drain()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._has_work():
                    self._wake.wait()
                if self._closed:
                    return
            self.step()

    def _has_work(self) -> bool:
        return bool(self._tenants or self._prefilling or self._decoding or self._ingest)

    def step(self) -> StepReport:
        """One iteration of the policy in the module docstring."""
        with torch.inference_mode():
            layers = self.llm.forward.layers_count
            budget = self.config.step_tokens * layers
            finished = self._drop_cancelled()
            self._admit()
            decoded = tuple(r.id for r in self._decoding)
            finished += self._decode()
            spent = len(decoded) * layers
            prefilled, started, done, spent = self._prefill(spent, budget)
            finished += done
            ingested, spent = self._ingest_work(spent, budget)
        return StepReport(decoded, prefilled, started, tuple(finished), ingested, spent)

    def _drop_cancelled(self) -> list[int]:
        dropped = [r for r in (*self._prefilling, *self._decoding) if r.cancelled]
        for request in dropped:
            request.prefill.close()
            self._end(request)
        return [r.id for r in dropped]

    def _admit(self) -> None:
        with self._lock:
            while len(self._prefilling) + len(self._decoding) < self.config.max_batch_size:
                request = self._next_waiting()
                if request is None:
                    return
                self._prefilling.append(request)

    def _next_waiting(self) -> Request | None:
        """The head of the next tenant's queue in round-robin order, skipping tenants with a request in prefill."""
        busy = {r.tenant for r in self._prefilling}
        for _ in range(len(self._tenants)):
            tenant = self._tenants.popleft()
            if tenant in busy:
                self._tenants.append(tenant)
                continue
            waiting = self._waiting[tenant]
            request = waiting.popleft()
            if waiting:
                self._tenants.append(tenant)
            else:
                del self._waiting[tenant]
            return request
        return None

    def _decode(self) -> list[int]:
        if not self._decoding:
            return []
        batch = list(self._decoding)
        ids = torch.tensor([r.last_token for r in batch])  # checked on the host, then moved: no device sync
        try:
            logits = self.decoder.decode(ids, self._batch)
        except Exception as exc:  # a bug, not an input: every request in the batch fails with it
            log.exception("batched decode step failed")
            for request in batch:
                self._end(request, exc)
            return [r.id for r in batch]
        picked = logits.argmax(-1).tolist()  # one device read for the whole batch, not one a request
        return [r.id for r, token in zip(batch, picked) if self._emit(r, token)]

    def _emit(self, request: Request, picked: int) -> bool:
        """Send the token the request's logits picked; True if that ends the request."""
        token = request.greedy.push(picked)
        if token is not None:
            request.out.put(token)
            request.last_token = token.token_id
        if token is None or request.greedy.done:
            self._end(request)
            return True
        return False

    def _prefill(self, spent: int, budget: int) -> tuple[tuple[int, ...], tuple[int, ...], list[int], int]:
        prefilled: list[int] = []
        started: list[int] = []
        finished: list[int] = []
        first = self._prefilling[0] if self._prefilling else None
        while spent < budget and self._prefilling:
            request = self._prefilling[0]
            try:
                rows = next(request.prefill)
            except StopIteration as done:
                self._prefilling.popleft()
                started.append(request.id)
                if self._begin_decoding(request, done.value):
                    finished.append(request.id)
                self._admit()
                continue
            except Exception as exc:  # the request's own input: it alone fails
                self._prefilling.popleft()
                self._end(request, exc)
                finished.append(request.id)
                self._admit()
                continue
            prefilled.append(request.id)
            spent += rows
        if self._prefilling and self._prefilling[0] is first:
            self._prefilling.rotate(-1)
        return tuple(prefilled), tuple(started), finished, spent

    def _begin_decoding(self, request: Request, prefill: Prefill) -> bool:
        """Start decoding after a prefill with its first token; True if that already ends the request."""
        request.greedy = Greedy(self.llm, request.max_new_tokens, prefill.kv.length, request.started)
        self._batch.add(prefill.kv, request.greedy.budget)
        self._decoding.append(request)
        return self._emit(request, int(prefill.logits.argmax()))

    def _end(self, request: Request, error: BaseException | None = None) -> None:
        if request in self._decoding:  # its slot freed; the last slot's request moves into it
            slot = self._decoding.index(request)
            self._batch.remove(slot)
            self._decoding[slot] = self._decoding[-1]
            self._decoding.pop()
        if request in self._prefilling:
            self._prefilling.remove(request)
        request.out.put(_END if error is None else error)

    def _ingest_work(self, spent: int, budget: int) -> tuple[int, int]:
        ingested = 0
        while spent < budget and self._ingest:
            job = self._ingest[0]
            if job.cancel is not None and job.cancel.is_set():
                self._finish_job(RequestCancelled("the ingestion call was cancelled"))
                continue
            try:
                rows = next(job.batches[0])
            except StopIteration as done:
                job.results.extend(done.value)
                job.batches.popleft()
                if not job.batches:
                    self._finish_job()
                continue
            except Exception as exc:
                self._finish_job(exc)
                continue
            ingested += rows
            spent += rows
        return ingested, spent

    def _finish_job(self, error: BaseException | None = None) -> None:
        with self._lock:
            job = self._ingest.popleft()
        for batch in job.batches:
            batch.close()
        job.finish(error)

    def _drain(self) -> None:
        """After the loop stopped: end all that is left."""
        with self._lock:
            waiting = [r for q in self._waiting.values() for r in q]
            self._waiting.clear()
            self._tenants.clear()
        closed = RequestCancelled("the engine is closed")
        for request in (*waiting, *self._prefilling, *self._decoding):
            request.prefill.close()
            self._end(request, closed)
        while self._ingest:
            self._finish_job(closed)
