"""Which chunks' KV is worth its bytes? KV policies and budgets on a Zipf question stream over MuSiQue.

MuSiQue: all passages of the first questions (`--questions`, 10 each), question i's to tenant
i % 4. Each policy run has its own 4 tenants holding the same passages (`eager-t0`,
`lazy-25-t0`, ...), all in one server, so every run meets the same machine: the stream is asked
draw by draw, each draw once for every run (in an order rotated each draw), one question at a
time. The eager tenants' KV is computed at ingestion, the others' is not; ingestion happens once
into `--data-dir`, and each benchmark works on a copy of it.

A fixed stream of questions drawn with Zipf popularity (s = 1.1); each question retrieves its
top 3 chunks and is timed to its first token only (1 new token). The worker keeps one question's
chunks in its memory (and the runs' tenants never share a blob), so the hits counted are store hits.

R is the KV bytes of the distinct chunks the stream retrieves (from a Search of each distinct
question on the eager tenants). Runs: `eager` (no budget); `lazy` and `admit_on_reuse` (N = 2)
with each tenant's budget 10%, 25% and 50% of its share of R; `none` (full prefill every time).
For each: KV bytes stored at the end, store hit rate, mean and p50 TTFT (blended prefill; a miss
pays its chunk's prefill), recompute seconds, from the server's /metrics and the client's clock.
`--runs` picks some of the runs (`eager` and `none` always among them: the target is measured
against them), for a run of the issue's size that fits a session: each run costs its TTFT on
every draw.

    .venv/bin/python bench/kv_policy.py [--quick] [--draws N] [--runs eager,lazy@50,none] [--data ../shared/data/musique_dev.json] [--data-dir DIR]

Writes bench/results/kv_policy.json, also every CHECKPOINT_DRAWS draws (with `draws_done`), so a
long run stopped early keeps what it measured.
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.musique import DEFAULT_DATA, load_questions  # noqa: E402
from bench.serving import TENANTS, ZIPF_S, started, zipf_stream  # noqa: E402
from client.api import Client, DocumentText  # noqa: E402
from protos.tenantkv.v1 import tenant_admin_pb2  # noqa: E402
from server.process import ServerProcess, free_port  # noqa: E402

PASSAGES = 10  # every MuSiQue question has 10
K = 3
ADMIT_AFTER = 2
BUDGETS = (10, 25, 50)  # percent of R
INGEST_BATCH = 10  # documents an Upsert
CHECKPOINT_DRAWS = 50  # draws between writes of the results so far
MANIFEST = "bench-kv-policy.json"  # in the data dir: what was ingested there
# One question's chunks in the worker's memory: 3 chunks of up to 256 tokens of SmolLM2-135M's
# KV decoded to float32 (30 layers x 2 x 3 KV heads x 64 x 4 bytes = 46,080 bytes a token).
WORKER_CACHE_BYTES = K * 256 * 46_080


@dataclass(frozen=True, slots=True)
class Run:
    name: str  # "eager", "lazy@25", "none"
    policy: str
    budget_percent: int  # 0: no budget
    mode: str  # the generation mode asked for

    def tenant(self, question: int) -> str:
        return f"{self.name.replace('@', '-')}-t{question % TENANTS}"

    @property
    def tenants(self) -> list[str]:
        return [self.tenant(t) for t in range(TENANTS)]


RUNS = [
    Run("eager", "eager", 0, "blend"),
    *(Run(f"{p}@{b}", p, b, "blend") for p in ("lazy", "admit_on_reuse") for b in BUDGETS),
    Run("none", "none", 0, "full_prefill"),
]


def chosen_runs(names: str) -> list[Run]:
    """The runs named (comma-separated), in RUNS' order: `eager`, `none` and one with a budget at least."""
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    if unknown := wanted - {r.name for r in RUNS}:
        raise SystemExit(f"--runs: unknown {sorted(unknown)}; choose from {[r.name for r in RUNS]}")
    if missing := {"eager", "none"} - wanted:
        raise SystemExit(f"--runs: needs {sorted(missing)} too: the target's saving is measured between them")
    if not any(r.budget_percent for r in RUNS if r.name in wanted):
        raise SystemExit("--runs: needs a run with a budget (lazy@N or admit_on_reuse@N): the target is about one")
    return [r for r in RUNS if r.name in wanted]


def ingest(data_dir: Path, items: list[dict], runs: list[Run]) -> None:
    """Every run's tenants with every question's passages, once: the eager ones with their KV computed
    (a server with precompute_kv on), then the others without (precompute_kv off)."""
    manifest = data_dir / MANIFEST
    wanted = {"questions": len(items), "passages": PASSAGES, "tenants": TENANTS, "runs": [r.name for r in runs]}
    if manifest.exists():
        if (found := json.loads(manifest.read_text())) != wanted:
            raise SystemExit(f"{data_dir} holds {found}, not {wanted}: use another --data-dir")
        return
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SystemExit(f"{data_dir} is not empty and has no {MANIFEST}: use an empty or new --data-dir")
    eager = [r for r in runs if r.policy == "eager"]
    others = [r for r in runs if r.policy != "eager"]
    for group, precompute in ((eager, "true"), (others, "false")):
        with started(ServerProcess(data_dir, {"warm_up": "false", "precompute_kv": precompute})) as server:
            upload(server, group, items)
    manifest.write_text(json.dumps(wanted) + "\n")


def upload(server: ServerProcess, runs: list[Run], items: list[dict]) -> None:
    with Client(server.address, server.admin_key) as admin:
        keys = {}
        for run in runs:
            for tenant in run.tenants:
                admin.create_tenant(tenant, tenant_admin_pb2.TenantSettings(kv_policy=run.policy, kv_admit_after=ADMIT_AFTER))
                keys[tenant] = admin.create_api_key(tenant).api_key
    progress = tqdm(total=len(runs) * len(items) * PASSAGES, desc=f"ingest ({', '.join(r.name for r in runs)})", unit="doc")
    for run in runs:
        for t in range(TENANTS):
            docs = [
                DocumentText(f"q{n}-p{i}", text=f"{ctx['title']}\n{ctx['text']}")
                for n, item in enumerate(items) if n % TENANTS == t for i, ctx in enumerate(item["ctxs"][:PASSAGES])
            ]
            with Client(server.address, keys[run.tenant(t)]) as client:
                for start in range(0, len(docs), INGEST_BATCH):
                    client.upsert([docs[start : start + INGEST_BATCH]])
                    progress.update(len(docs[start : start + INGEST_BATCH]))
    progress.close()


def metrics(port: int) -> dict[str, dict[tuple, float]]:
    """/metrics: sample name -> sorted label items -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict[str, dict[tuple, float]], name: str, tenants: list[str], **labels: str) -> float:
    """The sum of a sample over `tenants` (and the given labels)."""
    return sum(
        v for key, v in samples.get(name, {}).items() if dict(key).get("tenant") in tenants and set(labels.items()) <= set(key)
    )


def retrieved_bytes(server: ServerProcess, keys: dict[str, str], items: list[dict], draws: list[int]) -> dict[str, int]:
    """Per question-tenant index, the KV bytes of the distinct chunks the stream retrieves, read on the eager run's tenants."""
    eager = RUNS[0]  # ingested by every selection of runs
    chunks: dict[int, set[int]] = {t: set() for t in range(TENANTS)}
    for n in set(draws):
        with Client(server.address, keys[eager.tenant(n)]) as client:
            chunks[n % TENANTS].update(h.chunk_id for h in client.search(items[n]["question"], k=K).hits)
    sizes = {}
    for t, ids in chunks.items():
        with Client(server.address, keys[eager.tenant(t)]) as client:
            sizes[f"t{t}"] = sum(len(blob) for _, blob in client.fetch_kv(sorted(ids)).values()) if ids else 0
    return sizes


def ask(client: Client, question: str, mode: str) -> float | str:
    """Time to the first token in ms, or the error's status name."""
    started_at = time.perf_counter()
    try:
        for event in client.ask(question, k=K, max_new_tokens=1, mode=mode):
            if event.WhichOneof("event") == "token":
                return (time.perf_counter() - started_at) * 1e3
    except grpc.RpcError as exc:
        return exc.code().name
    return "NO_TOKEN"


def bench(data_dir: Path, items: list[dict], draws: list[int], runs: list[Run], checkpoint: Callable[[dict], None]) -> dict:
    """The stream asked of every run; the report, also handed to `checkpoint` every CHECKPOINT_DRAWS draws."""
    port = free_port()
    settings = {"metrics_port": port, "kv_cache_bytes": WORKER_CACHE_BYTES, "kv_admit_after": ADMIT_AFTER}
    with started(ServerProcess(data_dir, settings)) as server, Client(server.address, server.admin_key) as admin:
        keys = {tenant: admin.create_api_key(tenant).api_key for run in runs for tenant in run.tenants}
        share_of_r = retrieved_bytes(server, keys, items, draws)
        for run in runs:
            for t in range(TENANTS):
                budget = max(1, share_of_r[f"t{t}"] * run.budget_percent // 100) if run.budget_percent else 0
                settings = tenant_admin_pb2.TenantSettings(kv_policy=run.policy, kv_admit_after=ADMIT_AFTER, max_kv_bytes=budget)
                admin.update_tenant(run.tenant(t), settings)
        clients = {tenant: Client(server.address, key) for tenant, key in keys.items()}
        ttft: dict[str, list[float]] = {run.name: [] for run in runs}
        errors: dict[str, dict[str, int]] = {run.name: {} for run in runs}
        for d, n in enumerate(tqdm(draws, desc="stream (every run each draw)", unit="draw")):
            for run in runs[d % len(runs) :] + runs[: d % len(runs)]:
                outcome = ask(clients[run.tenant(n)], items[n]["question"], run.mode)
                if isinstance(outcome, str):
                    errors[run.name][outcome] = errors[run.name].get(outcome, 0) + 1
                else:
                    ttft[run.name].append(outcome)
            if (d + 1) % CHECKPOINT_DRAWS == 0 and d + 1 < len(draws):
                checkpoint(summary(runs, metrics(port), ttft, errors, share_of_r, d + 1))
        time.sleep(2.0)  # the last answers' computed KV is stored after their streams end
        samples = metrics(port)
        for client in clients.values():
            client.close()
    return summary(runs, samples, ttft, errors, share_of_r, len(draws))


def summary(runs: list[Run], samples: dict, ttft: dict[str, list[float]], errors: dict, share_of_r: dict[str, int], draws_done: int) -> dict:
    """Each run's figures after `draws_done` draws, from /metrics `samples` and the client's TTFTs."""
    policies = {}
    for run in runs:
        hits = total(samples, "tenantkv_kv_hits_total", run.tenants)
        misses = total(samples, "tenantkv_kv_misses_total", run.tenants)
        policies[run.name] = {
            "kv_bytes": int(total(samples, "tenantkv_kv_stored_bytes", run.tenants)),
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "ttft_mean_ms": statistics.fmean(ttft[run.name]),
            "ttft_p50_ms": statistics.median(ttft[run.name]),
            "recompute_s": total(samples, "tenantkv_kv_recompute_seconds_total", run.tenants),
            "misses": {c: int(total(samples, "tenantkv_kv_misses_total", run.tenants, cause=c)) for c in ("never_computed", "evicted", "stale")},
            "evictions": int(total(samples, "tenantkv_kv_evictions_total", run.tenants)),
            "errors": errors[run.name],
        }
    report = {"retrieved_kv_bytes": sum(share_of_r.values()), "policies": policies, "retrieved_kv_bytes_per_tenant": share_of_r}
    report["target"] = target(policies)
    report["draws_done"] = draws_done
    return report


def target(policies: dict[str, dict]) -> dict:
    """The issue's target: some policy with a budget of at most 50% of R keeping >= 85% of eager's mean TTFT saving over none."""
    none, eager = policies["none"]["ttft_mean_ms"], policies["eager"]["ttft_mean_ms"]
    shares = {name: (none - row["ttft_mean_ms"]) / (none - eager) for name, row in policies.items() if "@" in name}
    best = max(shares, key=shares.get)
    return {
        "saving_share": shares,
        "best": best,
        "best_kv_share_of_eager": policies[best]["kv_bytes"] / max(1, policies["eager"]["kv_bytes"]),
        "met": shares[best] >= 0.85,
    }


def print_table(report: dict) -> None:
    print(f"R = {report['retrieved_kv_bytes'] / 1e6:.1f} MB")
    print(f"{'policy':<20}{'KV MB':>9}{'hit rate':>10}{'TTFT mean ms':>14}{'TTFT p50 ms':>13}{'recompute s':>13}{'saving':>8}")
    for name, row in report["policies"].items():
        share = report["target"]["saving_share"].get(name)
        print(
            f"{name:<20}{row['kv_bytes'] / 1e6:>9.1f}{row['hit_rate']:>10.2f}{row['ttft_mean_ms']:>14.0f}"
            f"{row['ttft_p50_ms']:>13.0f}{row['recompute_s']:>13.1f}{'' if share is None else f'{share:>8.2f}'}"
        )
    t = report["target"]
    print(f"target (>= 0.85 of eager's TTFT saving at <= 50% of R): best {t['best']} {t['saving_share'][t['best']]:.2f}, "
          f"with {t['best_kv_share_of_eager']:.2f} of eager's KV bytes: {'met' if t['met'] else 'missed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 questions, 200 draws")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--data-dir", type=Path, help="the ingested store, kept for later runs; default: a temporary one")
    parser.add_argument("--questions", type=int, default=50, help="MuSiQue questions whose passages are ingested")
    parser.add_argument("--draws", type=int, default=1000, help="questions in the stream (each asked once per run)")
    parser.add_argument("--runs", default=",".join(r.name for r in RUNS), help="the runs to measure (eager and none among them)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kv_policy.json")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.draws = 10, min(args.draws, 200)
    runs = chosen_runs(args.runs)
    items = load_questions(args.data, args.questions)
    draws = zipf_stream(len(items), args.draws)
    setup = {"questions": args.questions, "passages": PASSAGES, "tenants": TENANTS, "draws": args.draws, "zipf_s": ZIPF_S,
             "k": K, "admit_after": ADMIT_AFTER, "worker_kv_cache_bytes": WORKER_CACHE_BYTES}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(report: dict) -> None:
        args.out.write_text(json.dumps({**report, "setup": setup}, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="tenantkv-kv-policy-") as tmp:
        ingested = args.data_dir or Path(tmp) / "ingested"
        ingest(ingested, items, runs)
        work = Path(tmp) / "run"
        shutil.copytree(ingested, work)  # the runs write KV and evict: the ingested store stays as ingested
        report = bench(work, items, draws, runs, write)
    write(report)
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
