"""Does routing by chunk locality pay? `tenantkv serve` in front of `tenantkv worker` processes on loopback.

MuSiQue: the first 5 passages of each question, ingested once (with KV precompute, through a
server with its in-process worker) for 4 tenants, question i's passages to tenant i % 4; a stream
of questions drawn with Zipf popularity (s = 1.1), so their chunks recur; each asked by its
tenant (k=3, 8 new tokens: routing, not decoding, is measured).

- Hop: each distinct question of the stream once, in order of first appearance, one client, on a
  server with its in-process worker and on a server with one remote worker (both caches large
  enough for everything): time to first token p50. Every answer is cold, so the remote side pays
  the Generate call and its KV fetch through KVCache.Fetch. The remote worker's cache then holds
  the hot set (the distinct chunks the stream retrieves): its Status gives their decoded bytes.
- Routing: 2 remote workers, each with a KV cache of a third of the hot set's decoded bytes;
  `locality`, `round_robin` and `least_loaded` on the same stream from closed-loop clients:
  worker-cache hit rate and bytes fetched from the store per answer (the router's counters, read
  from /metrics), time to the first token as the client sees it (p50/p99), answers/s; the hit
  rate's ceiling (every distinct chunk misses once: 1 - distinct chunks / chunk lookups) and what
  it allows any routing against round robin, the routing decisions by reason, and the 1-minute
  load average before and after.

Servers, workers and clients share this machine's cores: compare routings within one run.

    .venv/bin/python bench/serving.py [--quick] [--data ../shared/data/musique_dev.json] [--data-dir DIR]

`--data-dir` keeps the ingested store for later runs (ingestion costs ~1 s a chunk on a CPU).
Writes bench/results/serving.json.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, TypeVar

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.musique import DEFAULT_DATA, PASSAGES, load_questions  # noqa: E402
from client.api import Client, DocumentText  # noqa: E402
from protos.tenantkv.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402
from server.process import ServerProcess, WorkerProcess, free_ports, wait_serving  # noqa: E402

TENANTS = 4
ZIPF_S = 1.1
K = 3
MAX_NEW_TOKENS = 8
INGEST_BATCH = 8  # documents an Upsert
HOP_CACHE_BYTES = 16 << 30  # large enough for any hot set here: the hop pass evicts nothing
ROUTINGS = ("locality", "round_robin", "least_loaded")
MANIFEST = "bench-serving.json"  # in the data dir: what was ingested there
FIRST_WAIT_S = 180  # for a server or worker to serve before checking that it is still alive
START_TIMEOUT_S = 900  # a start in all: minutes on a loaded 2-core machine

P = TypeVar("P", ServerProcess, WorkerProcess)


@dataclass(frozen=True, slots=True)
class Question:
    tenant: str
    text: str


@dataclass
class Answers:
    """What a stream of questions got, shared by the client threads."""

    ttft_ms: list[float] = field(default_factory=list)
    chunk_ids: set[int] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ttft_percentile(self, share: float) -> float:
        ordered = sorted(self.ttft_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def tenant_of(question: int) -> str:
    return f"tenant{question % TENANTS}"


def zipf_stream(questions: int, length: int, seed: int = 0) -> list[int]:
    """`length` question indices, popularity 1/rank^s over a random ranking of the questions."""
    rng = np.random.default_rng(seed)
    ranking = rng.permutation(questions)
    weights = 1.0 / np.arange(1, questions + 1) ** ZIPF_S
    return ranking[rng.choice(questions, size=length, p=weights / weights.sum())].tolist()


def ingest(data_dir: Path, items: list[dict], passages: int) -> None:
    """Ingest each question's first `passages` passages into `data_dir` once; a data dir whose manifest says so is reused."""
    manifest = data_dir / MANIFEST
    wanted = {"questions": len(items), "passages": passages, "tenants": TENANTS}
    if manifest.exists():
        found = json.loads(manifest.read_text())
        if found != wanted:
            raise SystemExit(f"{data_dir} holds {found}, not {wanted}: use another --data-dir")
        return
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"{data_dir} is not empty and has no {MANIFEST}: use an empty or new --data-dir")
    documents: dict[str, list[DocumentText]] = {tenant_of(t): [] for t in range(TENANTS)}
    for n, item in enumerate(items):
        for i, ctx in enumerate(item["ctxs"][:passages]):
            documents[tenant_of(n)].append(DocumentText(f"q{n}-p{i}", text=f"{ctx['title']}\n{ctx['text']}"))
    with started(ServerProcess(data_dir, {"warm_up": "false"})) as server:
        keys = tenant_keys(server, create=True)
        progress = tqdm(total=sum(len(d) for d in documents.values()), desc="ingest passages", unit="doc")
        for tenant, docs in documents.items():
            with Client(server.address, keys[tenant]) as client:
                for start in range(0, len(docs), INGEST_BATCH):
                    client.upsert([docs[start : start + INGEST_BATCH]])
                    progress.update(len(docs[start : start + INGEST_BATCH]))
        progress.close()
    manifest.write_text(json.dumps(wanted) + "\n")


def tenant_keys(server: ServerProcess, create: bool = False) -> dict[str, str]:
    """A fresh read-write key per tenant (creating the tenants first when `create`)."""
    with Client(server.address, server.admin_key) as admin:
        if create:
            for t in range(TENANTS):
                admin.create_tenant(tenant_of(t))
        return {tenant_of(t): admin.create_api_key(tenant_of(t)).api_key for t in range(TENANTS)}


@dataclass
class Fleet:
    server: ServerProcess
    workers: list[WorkerProcess]
    metrics_port: int

    def metrics(self) -> dict[str, dict[str, float]]:
        """The router's counters from /metrics: sample name -> label value (worker or reason) -> value."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        samples: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith(("tenantkv_worker_", "tenantkv_kv_cache_", "tenantkv_routing_")):
                    label = sample.labels.get("worker", sample.labels.get("reason", ""))
                    samples.setdefault(sample.name, {})[label] = sample.value
        return samples

    def wait_workers_up(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(self.metrics().get("tenantkv_worker_up", {}).values()) < max(1, len(self.workers)):
            if time.monotonic() > deadline:
                raise TimeoutError("the router never saw every worker up")
            time.sleep(0.5)

    def cached_bytes(self, worker: WorkerProcess) -> tuple[int, int]:
        """The worker's KV cache, from its own Status: (entries, decoded bytes)."""
        with grpc.insecure_channel(worker.address) as channel:
            status = worker_pb2_grpc.WorkerStub(channel).Status(worker_pb2.StatusRequest(since_sequence=0), timeout=30)
        return len(status.snapshot), sum(entry.bytes for entry in status.snapshot)


@contextmanager
def fleet(data_dir: Path, remote_workers: int, kv_cache_bytes: int, routing: str = "locality") -> Iterator[Fleet]:
    """A server over `data_dir` routing by `routing` to `remote_workers` worker processes (0: its
    in-process worker), every worker's KV cache `kv_cache_bytes`; yields once the router has them all up."""
    metrics_port, *ports = free_ports(1 + remote_workers)
    settings = {
        "warm_up": "false", "metrics_port": metrics_port, "routing": routing, "kv_cache_bytes": kv_cache_bytes,
        "workers": ",".join(f"127.0.0.1:{port}" for port in ports),
    }
    with started(ServerProcess(data_dir, settings)) as server, ExitStack() as stack:
        workers: list[WorkerProcess] = []
        if ports:
            with Client(server.address, server.admin_key) as admin:
                key = admin.create_api_key(worker=True).api_key
            workers = [WorkerProcess(server.address, key, port=port, kv_cache_bytes=kv_cache_bytes) for port in ports]
            with ThreadPoolExecutor(len(workers)) as pool:
                list(pool.map(lambda w: stack.enter_context(started(w)), workers))
        running = Fleet(server, workers, metrics_port)
        running.wait_workers_up()
        yield running


@contextmanager
def started(process: P) -> Iterator[P]:
    """`process` started, killed on the way out. A start may take minutes on this shared machine;
    a process that exited before serving is started once more (one worker of two once did)."""
    try:
        for attempt in range(2):
            try:
                process.start(FIRST_WAIT_S)
                break
            except TimeoutError:
                if process.process.poll() is None:
                    wait_serving(process.address, START_TIMEOUT_S)
                    break
                if attempt:
                    raise
                print(f"{process.address} exited with status {process.process.returncode} before serving; starting it again")
        yield process
    finally:
        if process.process is not None and process.process.poll() is None:
            process.kill()


def ask_stream(server: ServerProcess, questions: list[Question], clients: int, label: str) -> Answers:
    """`clients` closed-loop clients take the questions in order, each asking the next when its answer ends."""
    keys = tenant_keys(server)
    answers = Answers()
    queue = iter(questions)
    progress = tqdm(total=len(questions), desc=label, unit="answer")

    def work(_: int) -> None:
        opened = {tenant: Client(server.address, key) for tenant, key in keys.items()}
        try:
            while True:
                with answers.lock:
                    question = next(queue, None)
                if question is None:
                    return
                ask(opened[question.tenant], question, answers)
                progress.update()
        finally:
            for client in opened.values():
                client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    answers.seconds = time.perf_counter() - started
    progress.close()
    return answers


def ask(client: Client, question: Question, answers: Answers) -> None:
    """One answer: time to its first token event as the client sees it, and the chunks it used."""
    started = time.perf_counter()
    first = None
    chunk_ids: list[int] = []
    try:
        for event in client.ask(question.text, k=K, max_new_tokens=MAX_NEW_TOKENS):
            kind = event.WhichOneof("event")
            if kind == "chunks":
                chunk_ids = [hit.chunk_id for hit in event.chunks.hits]
            elif kind == "token" and first is None:
                first = (time.perf_counter() - started) * 1e3
    except grpc.RpcError as exc:
        with answers.lock:
            answers.errors[exc.code().name] = answers.errors.get(exc.code().name, 0) + 1
        return
    with answers.lock:
        answers.chunk_ids.update(chunk_ids)
        if first is not None:
            answers.ttft_ms.append(first)


def stream_questions(items: list[dict], length: int) -> list[Question]:
    return [Question(tenant_of(n), items[n]["question"]) for n in zipf_stream(len(items), length)]


def first_appearances(questions: list[Question]) -> list[Question]:
    return list(dict.fromkeys(questions))


def hop(data_dir: Path, questions: list[Question]) -> tuple[dict, dict]:
    """Each distinct question once from one client: the in-process worker, then one remote worker.
    Returns the hop's row and the hot set (the remote worker's cache after the pass)."""
    distinct = first_appearances(questions)
    with fleet(data_dir, 0, HOP_CACHE_BYTES) as running:
        local = ask_stream(running.server, distinct, 1, "hop: in-process")
    with fleet(data_dir, 1, HOP_CACHE_BYTES) as running:
        remote = ask_stream(running.server, distinct, 1, "hop: remote")
        entries, decoded = running.cached_bytes(running.workers[0])
    row = {
        "in_process_ttft_p50_ms": statistics.median(local.ttft_ms),
        "remote_ttft_p50_ms": statistics.median(remote.ttft_ms),
        "questions": len(distinct),
        "errors": {"in_process": local.errors, "remote": remote.errors},
    }
    hot = {"chunks": len(remote.chunk_ids), "cached_entries": entries, "decoded_bytes": decoded}
    return row, hot


def routing_run(data_dir: Path, routing: str, questions: list[Question], clients: int, kv_cache_bytes: int) -> dict:
    """The stream through 2 remote workers routed by `routing`; hit rate and bytes fetched from the router's counters."""
    with fleet(data_dir, 2, kv_cache_bytes, routing) as running:
        load_before = os.getloadavg()[0]
        answers = ask_stream(running.server, questions, clients, f"routing: {routing}")
        counters = running.metrics()
        load_after = os.getloadavg()[0]
    hits = sum(counters["tenantkv_kv_cache_hits_total"].values())
    misses = sum(counters["tenantkv_kv_cache_misses_total"].values())
    answered = len(answers.ttft_ms)
    return {
        "hit_rate": hits / max(1, hits + misses),
        "hit_rate_ceiling": 1 - len(answers.chunk_ids) / max(1, hits + misses),
        "fetched_bytes_per_answer": sum(counters["tenantkv_worker_fetched_bytes_total"].values()) / max(1, answered),
        "ttft_p50_ms": statistics.median(answers.ttft_ms),
        "ttft_p99_ms": answers.ttft_percentile(0.99),
        "answers_per_s": answered / answers.seconds,
        "answers": answered,
        "errors": answers.errors,
        "requests_per_worker": sorted(counters["tenantkv_worker_requests_total"].values()),
        "decisions": counters.get("tenantkv_routing_decisions_total", {}),
        "load_average": [load_before, load_after],
    }


def print_table(report: dict) -> None:
    print(f"{'routing':<14}{'hit rate':>10}{'MB fetched/answer':>19}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}{'answers/s':>11}  decisions")
    for routing, row in report["routing"].items():
        decisions = ", ".join(f"{reason} {count:.0f}" for reason, count in row["decisions"].items() if count)
        print(
            f"{routing:<14}{row['hit_rate']:>10.2f}{row['fetched_bytes_per_answer'] / 1e6:>19.1f}"
            f"{row['ttft_p50_ms']:>13.0f}{row['ttft_p99_ms']:>13.0f}{row['answers_per_s']:>11.2f}  {decisions}"
        )
    ceiling = max(row["hit_rate_ceiling"] for row in report["routing"].values())
    print(f"hit rate ceiling (each distinct chunk missed once): {ceiling:.2f}")
    round_robin = report["routing"].get("round_robin")
    if round_robin:  # what any routing could reach on this stream, against round robin's
        print(f"at that ceiling, x round robin: hit rate {ceiling / max(round_robin['hit_rate'], 1e-9):.2f}x, "
              f"misses (bytes fetched) {(1 - ceiling) / max(1 - round_robin['hit_rate'], 1e-9):.2f}x")
    h = report["hop"]
    print(f"hop: TTFT p50 in-process {h['in_process_ttft_p50_ms']:.0f} ms, remote {h['remote_ttft_p50_ms']:.0f} ms "
          f"({h['remote_ttft_p50_ms'] / h['in_process_ttft_p50_ms']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 questions of 1 passage, a stream of 12, 2 clients: a smoke test")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--data-dir", type=Path, help="the ingested store, kept for later runs; default: a temporary one")
    parser.add_argument("--questions", type=int, default=100, help="MuSiQue questions whose passages are ingested")
    parser.add_argument("--passages", type=int, default=PASSAGES, help="the first passages of each question")
    parser.add_argument("--stream", type=int, default=400, help="questions asked in each routing run")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop clients in the routing runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.passages, args.stream, args.clients = 4, 1, 12, 2
    items = load_questions(args.data, args.questions)
    questions = stream_questions(items, args.stream)
    with tempfile.TemporaryDirectory(prefix="tenantkv-serving-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        ingest(data_dir, items, args.passages)
        hop_row, hot = hop(data_dir, questions)
        kv_cache_bytes = hot["decoded_bytes"] // 3
        print(f"hot set: {hot['chunks']} chunks, {hot['decoded_bytes'] / 1e6:.0f} MB decoded; each worker's cache {kv_cache_bytes / 1e6:.0f} MB")
        report = {
            "routing": {routing: routing_run(data_dir, routing, questions, args.clients, kv_cache_bytes) for routing in ROUTINGS},
            "hop": hop_row,
            "hot_set": hot,
            "worker_kv_cache_bytes": kv_cache_bytes,
            "setup": {"questions": args.questions, "passages": args.passages, "tenants": TENANTS, "stream": args.stream,
                      "zipf_s": ZIPF_S, "clients": args.clients, "k": K, "max_new_tokens": MAX_NEW_TOKENS},
        }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
