"""Which KV blobs should a tenant's byte budget evict: least recently (LRU) or least frequently
(LFU) read? And what would it cost to persist the read statistics with an LMDB write per read?

A real store (`store.store.Store`) holds one tenant's chunks. A stream of questions drawn with
Zipf popularity (s = 1.1) over `--questions`, each retrieving its `--per-question` chunks, reads
each chunk's KV (`Store.read_kv`); a miss stores the KV "computed" for it (`Store.attach_kv`),
as the lazy policy does, under budgets of 10%, 25% and 50% of R (the KV bytes of the distinct
chunks the stream reads). Two starts: `lazy` (no KV at ingestion) and `eager` (every chunk's KV
at ingestion, then the budget evicts down to it). Hit rate = reads that found KV stored.

Then the costs, on a store of --chunks chunks: a `read_kv` as the store does it, the part of it
that records the read in memory (`AccessStats.touch`), and a one-key LMDB write transaction per
read, as persisting the statistics would add (fsynced and not).

    .venv/bin/python bench/kv_eviction.py [--quick] [--chunks 1000] [--questions 50] [--draws 1000]

Writes bench/results/kv_eviction.json.
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from store.access import EVICTIONS  # noqa: E402
from store.config import StoreConfig  # noqa: E402
from store.records import ChunkInput, DocumentInput, TenantSettings  # noqa: E402
from store.store import Store  # noqa: E402

DIM = 8
BUDGETS = (10, 25, 50)  # percent of R


def blob(chunk: int, size: int) -> bytes:
    return chunk.to_bytes(4, "little") * (size // 4)


def documents(chunks: int, size: int, kv: bool) -> list[DocumentInput]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((chunks, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        DocumentInput(f"d{i}", {}, [ChunkInput(f"chunk {i}", np.array([i, i + 1], dtype=np.int32), vectors[i], blob(i, size) if kv else None)])
        for i in range(chunks)
    ]


def question_stream(args: argparse.Namespace) -> list[list[int]]:
    """Each draw: the chunk indexes one question retrieves; questions drawn Zipf(s) by popularity."""
    rng = np.random.default_rng(1)
    chunks_of = [rng.choice(args.chunks, args.per_question, replace=False).tolist() for _ in range(args.questions)]
    weights = 1.0 / np.arange(1, args.questions + 1) ** args.zipf_s
    draws = rng.choice(args.questions, args.draws, p=weights / weights.sum())
    return [chunks_of[q] for q in draws]


def run(args: argparse.Namespace, root: Path, eviction: str, start: str, budget: int, stream: list[list[int]]) -> dict:
    config = StoreConfig(path=root / f"{eviction}-{start}-{budget}", dim=DIM, sync=False, kv_eviction=eviction)
    with Store(config) as store:
        store.create_tenant("acme")
        ids = [int(i) for i in store.upsert("acme", documents(args.chunks, args.kv_bytes, start == "eager"), "m").added]
        store.update_tenant("acme", TenantSettings(max_kv_bytes=budget))
        hits = reads = 0
        for question in stream:
            for index in question:
                reads += 1
                if store.read_kv(ids[index]) is not None:
                    hits += 1
                else:
                    store.attach_kv("acme", [(ids[index], blob(index, args.kv_bytes))], "m")
        usage = store.kv_usage()[0]
        assert usage.stored_bytes <= budget
        return dict(hit_rate=hits / reads, evictions=usage.evictions, kv_bytes=usage.stored_bytes)


def costs(args: argparse.Namespace, root: Path) -> dict:
    """Microseconds a KV read costs, and a one-key write transaction per read would add."""
    out = {}
    for sync in (True, False):
        with Store(StoreConfig(path=root / f"cost-{sync}", dim=DIM, sync=sync)) as store:
            store.create_tenant("acme")
            ids = [int(i) for i in store.upsert("acme", documents(args.chunks, args.kv_bytes, True), "m").added]
            n = args.cost_reads
            started = time.perf_counter()
            for i in range(n):
                store.read_kv(ids[i % len(ids)])
            read_us = (time.perf_counter() - started) / n * 1e6
            access, key = store._blobs.access, b"k" * 32
            started = time.perf_counter()
            for _ in range(n):
                access.touch("acme", key)
            out["access_touch_us"] = (time.perf_counter() - started) / n * 1e6
            env = store._env
            started = time.perf_counter()
            for i in range(n):
                env.write(lambda txn: txn.put(b"access", str(i).encode(), db=env.db["meta"]))
            write_us = (time.perf_counter() - started) / n * 1e6
        out["read_kv_us"] = min(out.get("read_kv_us", read_us), read_us)
        out[f"lmdb_write_per_read_us_{'fsync' if sync else 'nosync'}"] = write_us
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 chunks, 10 questions, 200 draws")
    parser.add_argument("--chunks", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--per-question", type=int, default=3)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--kv-bytes", type=int, default=16 << 10, help="every blob's size (equal sizes: the policy alone decides)")
    parser.add_argument("--cost-reads", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/kv_eviction.json")
    args = parser.parse_args()
    if args.quick:
        args = replace_args(args, chunks=200, questions=10, draws=200, cost_reads=300)
    stream = question_stream(args)
    distinct = {i for q in stream for i in q}
    retrieved = len(distinct) * args.kv_bytes
    root = Path(tempfile.mkdtemp(prefix="kv-eviction-"))
    results: dict = dict(args={k: str(v) for k, v in vars(args).items()}, retrieved_kv_bytes=retrieved, distinct_chunks=len(distinct), runs={})
    try:
        runs = [(e, s, b) for s in ("lazy", "eager") for b in BUDGETS for e in EVICTIONS]
        for eviction, start, percent in tqdm(runs, desc="eviction runs"):
            results["runs"][f"{eviction}/{start}@{percent}"] = run(args, root, eviction, start, retrieved * percent // 100, stream)
        results["costs"] = costs(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, run_result in results["runs"].items():
        print(f"{name:18s} hit rate {run_result['hit_rate']:.3f}  evictions {run_result['evictions']}")
    print(json.dumps(results["costs"]))


def replace_args(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


if __name__ == "__main__":
    main()
