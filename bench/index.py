"""Is the Curator-style index as fast as an index per tenant, at the memory of one shared index?

For each dataset and index: recall@10 against exact tenant-restricted search, mean and p99
latency (one thread, one query at a time, median of three passes), batch throughput (queries grouped by tenant), build
time, memory of the index structures beyond the raw vectors and in total, and the cost per vector
of insert+grant and of delete. Builds use both cores; searches and updates are timed on one
thread. Each index's search effort is swept, up to the setting after the first reaching recall@10 >= 0.95;
the table and the JSON report the cheapest setting reaching recall@10 >= 0.95 (and say which reached >= 0.90), and the mean
latency at exactly 0.95 (`ms_at_095`), interpolated between the two sweep points around it, the
median over `--runs` runs; in each run the indexes take turns, one effort each, so that the
points compared meet the same load, and Curator's ratio to each baseline is printed per run and
as their median.
At that setting, search latency while writes arrive (`mixed`: one write per 10 searches and
one per search, each to the tenant the next search asks) against the same searches with no
writes, and for Curator the first query of each tenant after a bulk load with no `build()`
(`first_query`). Filtered search (`filtered`): each vector gets a metadata
value drawn uniformly, independent of its tenant, and the queries keep 50%, 10% and 1% of each
tenant's vectors; recall@10 against the exact filtered top 10, mean and p99 latency, at each
index's chosen effort, for Curator and the IVF baselines (post-filter and IDSelector), each
query's filter compiled against the attribute table inside its timing, as a server does per
request, and each filtered query timed right after the same query unfiltered (JSON
`unfiltered_mean_ms`, the ratio's denominator).

    .venv/bin/python bench/index.py [--quick | --full] [--datasets synth,synth_uniform,synth_scatter15,wiki,wiki_lang]

Writes bench/results/index.json, keeping the entries of datasets and indexes this run did not measure.
"""

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# This script is named like the `index` package: import the package with this folder off the
# path, then put the folder back for `index_data`.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from index.attributes import Attributes  # noqa: E402
from index.baselines import FilteredSharedIndex, PerTenantIndex  # noqa: E402
from index.contract import IdPredicate  # noqa: E402
from index.curator import CuratorConfig, CuratorIndex  # noqa: E402
from index.filters import Range  # noqa: E402
from index.flat import FlatTenantIndex  # noqa: E402

sys.path.append(str(BENCH))
from index_data import SCATTER, Dataset, synthetic, wikipedia  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
K = 10
PASSES = 3
TARGET_RECALL = 0.95
WRITE_RATES = (0.1, 1.0)  # writes per search in the mixed workload
SELECTIVITIES = (0.5, 0.1, 0.01)  # shares of a tenant's vectors a filtered query keeps
FILTERED = ("curator", "per_tenant_ivf", "filtered_shared_ivf")
SYNTHETIC = {  # name -> synthetic() arguments; --scatter overrides the scatter of the first two
    "synth": {"uniform_queries": False},
    "synth_uniform": {"uniform_queries": True},
    "synth_scatter15": {"uniform_queries": True, "seed": 15, "scatter": 0.15},  # another draw, more scattered tenants
}
EFFORTS = {
    "curator": [64, 96, 128, 160, 192, 256, 384, 512],
    "per_tenant_ivf": [1, 2, 4, 6, 8, 12, 16, 32, 64],
    "per_tenant_hnsw": [16, 32, 64, 128, 256, 512],
    "filtered_shared_ivf": [4, 8, 16, 32, 64, 128, 256, 512],
    "filtered_shared_hnsw": [32, 64, 128, 256, 512, 1024],
    "flat": [0],
}


def make_index(name: str, dim: int):
    if name == "curator":
        return CuratorIndex(dim, CuratorConfig())
    if name == "flat":
        return FlatTenantIndex(dim)
    kind = name.rsplit("_", 1)[1]
    return (PerTenantIndex if name.startswith("per_tenant") else FilteredSharedIndex)(dim, kind)


def set_effort(index, effort: int) -> None:
    if isinstance(index, CuratorIndex):
        index.config = CuratorConfig(tree=index.config.tree, split_threshold=index.config.split_threshold,
                                     exact_threshold=index.config.exact_threshold, ef=effort, metric=index.config.metric)
    elif not isinstance(index, FlatTenantIndex):
        index.effort = effort


def load(index, data: Dataset, rows: np.ndarray) -> None:
    """Add rows under their owners, then grant the other readers."""
    owners = np.array([data.readers[i][0] for i in rows.tolist()])
    for tenant in np.unique(owners).tolist():
        mine = rows[owners == tenant]
        index.add(mine.astype(np.int64), data.vectors[mine], tenant)
    grants: dict[int, list[int]] = {}
    for i in rows.tolist():
        for tenant in data.readers[i][1:].tolist():
            grants.setdefault(tenant, []).append(i)
    for tenant, ids in grants.items():
        index.grant(np.array(ids, dtype=np.int64), tenant)


@dataclass
class Measured:
    recall: float
    mean_ms: float
    p99_ms: float
    batch_qps: float


def measure(index, data: Dataset, truth: np.ndarray) -> Measured:
    """Recall, latency one query at a time (each query's median over PASSES passes through all the
    queries: other work on this shared machine inflates single timings), and batch throughput."""
    latencies = np.empty((PASSES, len(data.queries)))
    found = []
    for p in range(PASSES):
        for i, (q, tenant) in enumerate(zip(data.queries, data.query_tenants.tolist())):
            started = time.perf_counter()
            _, ids = index.search(q[None, :], tenant, K)
            latencies[p, i] = time.perf_counter() - started
            if p == 0:
                found.append(ids[0])
    started = time.perf_counter()
    for tenant in np.unique(data.query_tenants).tolist():
        index.search(data.queries[data.query_tenants == tenant], tenant, K)
    batch_s = time.perf_counter() - started
    ms = np.median(latencies, axis=0) * 1e3
    return Measured(recall(found, truth), float(ms.mean()), float(np.percentile(ms, 99)), len(data.queries) / batch_s)


def built(name: str, dim: int, sample: np.ndarray, data: Dataset, base: np.ndarray) -> tuple[object, float]:
    """The index trained, loaded and built (on both cores), and the seconds that took."""
    index = make_index(name, dim)
    faiss.omp_set_num_threads(2)
    started = time.perf_counter()
    index.train(sample)
    load(index, data, base)
    if hasattr(index, "build"):
        index.build()
    return index, time.perf_counter() - started


def swept_in_turn(indexes: dict[str, object], data: Dataset, truth: np.ndarray, label: str) -> dict[str, list[tuple[int, Measured]]]:
    """Each index's recall and latency at each of its efforts, up to the one after the first reaching
    TARGET_RECALL; the indexes take turns, one effort each, so that the points an index's latency
    at 0.95 is read from and its baseline's are measured seconds apart, under the same load."""
    points: dict[str, list[tuple[int, Measured]]] = {name: [] for name in indexes}
    efforts = {name: iter(EFFORTS[name]) for name in indexes}
    with tqdm(total=sum(len(EFFORTS[name]) for name in indexes), desc=label, leave=False) as progress:
        while efforts:
            for name in list(efforts):
                effort = next(efforts[name], None)
                reached = sum(m.recall >= TARGET_RECALL for _, m in points[name])
                if effort is None or reached == 2:  # the setting reaching the target and the next: enough, and the high ones cost most
                    del efforts[name]
                    continue
                set_effort(indexes[name], effort)
                points[name].append((effort, measure(indexes[name], data, truth)))
                progress.update()
    return points


def measure_filtered(index, data: Dataset, truth: np.ndarray, where: Callable[[], IdPredicate]) -> tuple[Measured, float]:
    """Filtered recall and latency, each query timed right after the same query unfiltered, so the
    load of the moment weighs on both; `where` makes each query's filter, as a server would per
    request, inside the timing. Returns the filtered figures and the unfiltered mean ms."""
    latencies = np.empty((2, PASSES, len(data.queries)))  # unfiltered, filtered
    found = []
    for p in range(PASSES):
        for i, (q, tenant) in enumerate(zip(data.queries, data.query_tenants.tolist())):
            for filtered, make in enumerate((lambda: None, where)):
                started = time.perf_counter()
                _, ids = index.search(q[None, :], tenant, K, where=make())
                latencies[filtered, p, i] = time.perf_counter() - started
            if p == 0:
                found.append(ids[0])
    ms = np.median(latencies, axis=1) * 1e3
    return Measured(recall(found, truth), float(ms[1].mean()), float(np.percentile(ms[1], 99)), 0.0), float(ms[0].mean())


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    """Mean recall of each query's ids against its true ids (-1 padding ignored)."""
    return float(np.mean([len(set(f.tolist()) & set(t[t >= 0].tolist())) / max(1, (t >= 0).sum()) for f, t in zip(found, truth)]))


def ms_at_recall(sweep: list[tuple[int, Measured]], target: float = TARGET_RECALL) -> float | None:
    """Mean ms at exactly `target` recall, linear between the last sweep point below it and the first
    at or above it; the first point's ms if it already reaches it; None if none does."""
    for i, (_, m) in enumerate(sweep):
        if m.recall >= target:
            if i == 0:
                return m.mean_ms
            below = sweep[i - 1][1]
            share = (target - below.recall) / (m.recall - below.recall)
            return below.mean_ms + share * (m.mean_ms - below.mean_ms)
    return None


def mixed(index, data: Dataset, base: np.ndarray, fresh: np.ndarray, writes_per_search: float) -> tuple[float, float]:
    """(mean ms, p99 ms) of the queries, one at a time, with `writes_per_search` writes made before
    them to the tenant each asks (0.1: before every tenth); the writes alternate an insert of a
    `fresh` vector and a grant of a `base` vector the tenant cannot read, and are undone after each
    pass. Only the searches are timed; each query's latency is its median over PASSES passes."""
    latencies = np.empty((PASSES, len(data.queries)))
    for p in range(PASSES):
        rng = np.random.default_rng(p)
        inserted, granted = [], []
        for i, (q, tenant) in enumerate(zip(data.queries, data.query_tenants.tolist())):
            for _ in range(int(writes_per_search * (i + 1)) - int(writes_per_search * i)):
                if len(inserted) <= len(granted):
                    row = int(fresh[len(inserted)])
                    index.add(np.array([row], dtype=np.int64), data.vectors[row : row + 1], tenant)
                    inserted.append(row)
                else:
                    row = int(rng.choice(base))
                    while tenant in data.readers[row].tolist() or (row, tenant) in granted:
                        row = int(rng.choice(base))
                    index.grant(np.array([row], dtype=np.int64), tenant)
                    granted.append((row, tenant))
            started = time.perf_counter()
            index.search(q[None, :], tenant, K)
            latencies[p, i] = time.perf_counter() - started
        index.remove(np.array(inserted, dtype=np.int64))
        for row, tenant in granted:
            index.revoke(np.array([row], dtype=np.int64), tenant)
    ms = np.median(latencies, axis=0) * 1e3
    return float(ms.mean()), float(np.percentile(ms, 99))


def first_queries(index, data: Dataset) -> tuple[float, float]:
    """(mean ms, p99 ms) of each tenant's first query on an index loaded without build()."""
    seen, latencies = set(), []
    for q, tenant in zip(data.queries, data.query_tenants.tolist()):
        if tenant not in seen:
            seen.add(tenant)
            started = time.perf_counter()
            index.search(q[None, :], tenant, K)
            latencies.append((time.perf_counter() - started) * 1e3)
    return float(np.mean(latencies)), float(np.percentile(latencies, 99))


def update_costs(index, data: Dataset, rows: np.ndarray) -> tuple[float, float]:
    """Microseconds per vector to insert and grant to a second tenant, then to delete: the median
    of PASSES rounds of inserting and deleting all `rows`."""
    second = (data.readers[0][0] + 1) % data.tenants
    insert_us, delete_us = [], []
    for _ in range(PASSES):
        started = time.perf_counter()
        for i in rows.tolist():
            index.add(np.array([i], dtype=np.int64), data.vectors[i : i + 1], int(data.readers[i][0]))
            index.grant(np.array([i], dtype=np.int64), second)
        insert_us.append((time.perf_counter() - started) / len(rows) * 1e6)
        started = time.perf_counter()
        for i in rows.tolist():
            index.remove(np.array([i], dtype=np.int64))
        delete_us.append((time.perf_counter() - started) / len(rows) * 1e6)
    return float(np.median(insert_us)), float(np.median(delete_us))


def filters(data: Dataset, flat: FlatTenantIndex) -> dict[float, tuple]:
    """Per selectivity: what makes a query's filter (compiled against the attribute table, an
    `IdPredicate` every index takes) and the exact filtered top k of every query."""
    attributes = Attributes()
    buckets = np.random.default_rng(2).integers(0, 10_000, len(data.vectors))
    attributes.add(np.arange(len(data.vectors)), [{"bucket": int(b)} for b in buckets])
    chosen = {}
    for share in SELECTIVITIES:
        where = functools.partial(attributes.compile, Range("bucket", lt=10_000 * share))
        truth = np.stack([flat.search(q[None, :], t, K, where=where())[1][0] for q, t in zip(data.queries, data.query_tenants.tolist())])
        chosen[share] = (where, truth)
    return chosen


def run_dataset(data: Dataset, names: list[str], update_count: int, runs: int) -> dict:
    n, dim = data.vectors.shape
    held_out = np.arange(n - update_count, n)
    base = np.arange(n - update_count)
    raw = int(data.vectors[base].nbytes)
    print(f"\n== {data.name}: {len(base)} vectors, {data.tenants} tenants, {len(data.queries)} queries, "
          f"{np.mean([len(r) for r in data.readers]):.2f} readers per vector")
    flat = FlatTenantIndex(dim)
    load(flat, data, base)
    truth = np.stack([flat.search(q[None, :], t, K)[1][0] for q, t in zip(data.queries, data.query_tenants.tolist())])
    filtered_queries = filters(data, flat) if set(names) & set(FILTERED) else {}
    filtered: dict[str, dict] = {f"{share:g}": {} for share in filtered_queries}
    results = {}
    sample = data.vectors[np.random.default_rng(1).choice(base, size=min(len(base), 100_000), replace=False)]
    indexes, build_s = {}, {}
    for name in names:
        indexes[name], build_s[name] = built(name, dim, sample, data, base)
    faiss.omp_set_num_threads(1)
    sweeps: dict[str, list] = {name: [] for name in names}
    for run in range(runs):
        for name, points in swept_in_turn(indexes, data, truth, f"sweeps, run {run + 1}/{runs}").items():
            sweeps[name].append(points)
    for name in names:
        index = indexes.pop(name)
        sweep = sweeps[name][0]
        at_095 = [ms_at_recall(s) for s in sweeps[name]]
        memory = index.memory_bytes()
        chosen = next(((e, m) for e, m in sweep if m.recall >= TARGET_RECALL), max(sweep, key=lambda s: s[1].recall))
        at_90 = next((e for e, m in sweep if m.recall >= 0.90), None)
        set_effort(index, chosen[0])
        for share, (where, filtered_truth) in filtered_queries.items() if name in FILTERED else ():
            f, unfiltered_ms = measure_filtered(index, data, filtered_truth, where)
            filtered[f"{share:g}"][name] = {"recall_at_10": f.recall, "mean_ms": f.mean_ms, "p99_ms": f.p99_ms, "unfiltered_mean_ms": unfiltered_ms}
        quiet_ms, quiet_p99 = mixed(index, data, base, held_out, 0.0)
        loaded = {"quiet_p99_ms": quiet_p99, "quiet_mean_ms": quiet_ms}
        for rate in WRITE_RATES:
            mean_ms, p99_ms = mixed(index, data, base, held_out, rate)
            loaded[f"{rate:g}"] = {"mean_ms": mean_ms, "p99_ms": p99_ms}
        memory_after_mixed = index.memory_bytes()
        insert_us, delete_us = update_costs(index, data, held_out)
        m = chosen[1]
        results[name] = {
            "effort": chosen[0], "effort_at_recall_0_90": at_90, "recall_at_10": m.recall, "mean_ms": m.mean_ms,
            "p99_ms": m.p99_ms, "batch_qps": m.batch_qps, "memory_bytes": memory, "overhead_bytes": memory - raw,
            "build_s": build_s[name], "insert_us": insert_us, "delete_us": delete_us,
            "ms_at_095": None if None in at_095 else float(np.median(at_095)), "ms_at_095_runs": at_095,
            "mixed": loaded, "overhead_bytes_after_mixed": memory_after_mixed - raw,
            "sweep": [{"effort": e, "recall_at_10": s.recall, "mean_ms": s.mean_ms} for e, s in sweep],
        }
        if name == "curator":
            del index
            unbuilt = make_index(name, dim)
            unbuilt.train(sample)
            load(unbuilt, data, base)
            set_effort(unbuilt, chosen[0])
            mean_ms, p99_ms = first_queries(unbuilt, data)
            results[name]["first_query"] = {"mean_ms": mean_ms, "p99_ms": p99_ms}
            del unbuilt
    print(f"{'index':<22}{'effort':>7}{'recall':>8}{'mean ms':>9}{'p99 ms':>8}{'batch q/s':>10}{'overhead':>10}{'build s':>9}{'ins us':>8}{'del us':>8}"
          f"{'ms@.95':>8}{'quiet p99':>10}{'p99 .1':>8}{'p99 1':>8}")
    for name, r in results.items():
        at = "-" if r["ms_at_095"] is None else f"{r['ms_at_095']:.3f}"
        print(f"{name:<22}{r['effort']:>7}{r['recall_at_10']:>8.3f}{r['mean_ms']:>9.3f}{r['p99_ms']:>8.3f}{r['batch_qps']:>10.0f}"
              f"{r['overhead_bytes'] / raw:>9.1%} {r['build_s']:>8.1f}{r['insert_us']:>8.0f}{r['delete_us']:>8.0f}"
              f"{at:>8}{r['mixed']['quiet_p99_ms']:>10.3f}{r['mixed']['0.1']['p99_ms']:>8.3f}{r['mixed']['1']['p99_ms']:>8.3f}")
    for name, r in results.items():
        if name != "curator" and "curator" in results:
            ratios = [c / b for c, b in zip(results["curator"]["ms_at_095_runs"], r["ms_at_095_runs"]) if c is not None and b is not None]
            if ratios:
                print(f"curator ms at 0.95 x {name}'s: median {np.median(ratios):.2f} (runs {', '.join(f'{x:.2f}' for x in ratios)})")
    if filtered:
        print(f"{'filtered':<10}{'index':<22}{'recall':>8}{'mean ms':>9}{'p99 ms':>8}{'x unfiltered':>14}")
        for share, by_index in filtered.items():
            for name, f in by_index.items():
                print(f"{share:<10}{name:<22}{f['recall_at_10']:>8.3f}{f['mean_ms']:>9.3f}{f['p99_ms']:>8.3f}{f['mean_ms'] / f['unfiltered_mean_ms']:>14.2f}")
    return {"raw_vector_bytes": raw, "indexes": results, "filtered": filtered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 vectors, 50 tenants: a smoke run")
    parser.add_argument("--full", action="store_true", help="1,000,000 synthetic vectors, 1,000 tenants")
    parser.add_argument("--datasets", default=",".join([*SYNTHETIC, "wiki", "wiki_lang"]))
    parser.add_argument("--runs", type=int, default=3, help="sweeps per index; ms_at_095 is their median")
    parser.add_argument("--indexes", default=",".join(EFFORTS))
    parser.add_argument("--scatter", type=float, default=SCATTER, help="share of a synth tenant's vectors outside its home clusters")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "index.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    n, tenants, queries = (20_000, 50, 200) if args.quick else (1_000_000, 1000, 1000) if args.full else (200_000, 500, 1000)
    names = args.indexes.split(",")
    report = json.loads(args.out.read_text()) if args.out.exists() else {"datasets": {}}
    for dataset in args.datasets.split(","):
        if dataset in SYNTHETIC:
            data = synthetic(n + 1000, tenants, queries, **{"scatter": args.scatter, **SYNTHETIC[dataset]}, name=dataset)
        else:
            from worker.embedder import Embedder

            embedder = Embedder.default()
            languages = ("en-us", "es-es", "fr-fr") if dataset == "wiki_lang" else ("en-us",)
            data = wikipedia(languages, queries // 2 if args.quick else queries, embedder.embed)
        measured = run_dataset(data, names, update_count=200 if args.quick else 1000, runs=args.runs)
        kept = report["datasets"].get(dataset, {})
        filtered = {share: {**kept.get("filtered", {}).get(share, {}), **by_index} for share, by_index in measured["filtered"].items()}
        report["datasets"][dataset] = {**measured, "indexes": {**kept.get("indexes", {}), **measured["indexes"]}, "filtered": filtered or kept.get("filtered", {})}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each dataset: a long run keeps what it measured
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
