"""Does an online backup slow the service down? Search p99 without and during backups, and backup seconds.

A server runs in this process (`ServerThread`), as `tenantkv serve` would, with the store of
bench/service.py's vector phase: pre-embedded vectors of the synthetic clustered set for many
tenants (no KV precompute), plus chunks carrying KV blobs of a 256-token chunk's size in kivi4
(1.7 MB: SmolLM2-135M's 5.9 MB of fp16 KV over kivi4's 3.42x in results/codec.json), committed
through the server's own write path, so the KV segments hold what precomputed KV would. Search load comes from 4 closed-loop clients in a child process
(bench/service.py's `search_load`), so the load generator does not share the server's GIL.

Each round has a window without backup and two during which backups run back to back (each
into a new directory under a backup root, removed after it), so every timed Search of those
windows overlaps a backup: unpaced, and paced to --paced-mb-per-s. The backups run in a thread of the server's process through
`server.backup.Backups` over the store-level backup (`store.backup.backup`): the
`TenantAdmin.BackupStore` RPC is not wired yet, and that is what it will run.

    .venv/bin/python bench/backup.py [--quick] [--vectors 100000] [--kv-chunks 200] [--paced-mb-per-s 64] [--search-s 10] [--rounds 3]

Writes bench/results/backup.json.
"""

import argparse
import functools
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from index_data import synthetic  # noqa: E402
from service import ingest_vectors, provision, search_load, tenant_name  # noqa: E402
from server.app import ServerThread  # noqa: E402
from server.backup import Backups  # noqa: E402
from server.config import load_config  # noqa: E402
from store.records import ChunkInput, DocumentInput  # noqa: E402

SEARCH_CLIENTS = 4
KV_BATCH = 10  # chunks with KV a commit writes


@dataclass(frozen=True, slots=True)
class Served:
    """What bench/service.py's helpers need of a server: its address and admin key."""

    address: str
    admin_key: str


def search_window(address: str, keys: dict[str, str], queries: list[tuple[str, np.ndarray]], seconds: float) -> dict:
    """One timed Search window (run in the child process)."""
    return search_load(Served(address, ""), keys, queries, SEARCH_CLIENTS, seconds)


def add_kv_chunks(server: ServerThread, tenants: list[str], count: int, kv_bytes: int, dim: int) -> None:
    """`count` one-chunk documents with a random KV blob each, spread over `tenants`, committed
    as the Upsert handler commits them (blobs appended and fsynced, then one transaction)."""
    indexed = server.server.runtime.indexed_store
    rng = np.random.default_rng(1)
    for start in tqdm(range(0, count, KV_BATCH), desc="KV chunks", unit="batch"):
        tenant = tenants[(start // KV_BATCH) % len(tenants)]
        docs = []
        for i in range(start, min(count, start + KV_BATCH)):
            vector = rng.standard_normal(dim).astype(np.float32)
            chunk = ChunkInput(f"kv chunk {i}", rng.integers(0, 49152, 256).astype(np.int32), vector / np.linalg.norm(vector), rng.bytes(kv_bytes))
            docs.append(DocumentInput(f"kv{i}", {}, [chunk]))
        indexed.commit(tenant, docs, kv_fingerprint="bench-backup")


def back_up_until(backups: Backups, done: threading.Event, seconds: list[float], sizes: list[int]) -> None:
    """Back up again and again until `done`, each into a new directory removed after it."""
    while not done.is_set():
        report = backups.back_up(f"b{len(seconds)}")
        seconds.append(report.seconds)
        sizes.append(report.manifest.total_bytes)
        shutil.rmtree(report.path)


def backups_of(store, root: Path, mb_per_s: float) -> Backups:
    """The server's backups of `store` under `root` at `mb_per_s` (0: unpaced). No compaction runs
    in this benchmark, so no compactor lock is needed to keep one out."""
    back_up = functools.partial(store.backup, max_bytes_per_s=int(mb_per_s * 2**20))
    return Backups(root, back_up, threading.RLock())


@dataclass
class Measured:
    """Each window's Search figures by window name, and each backup's seconds by window name."""

    windows: dict[str, list[dict]]
    backup_seconds: dict[str, list[float]]
    backup_bytes: list[int] = field(default_factory=list)
    upsert: dict = field(default_factory=dict)


def measure(args: argparse.Namespace, paces: dict[str, float]) -> Measured:
    """Load a server, then run `args.rounds` rounds of a window without backup and one per pace."""
    dataset = synthetic(args.vectors, args.tenants, queries=2000, uniform_queries=True)
    owners = np.array([r[0] for r in dataset.readers])
    queries = [(tenant_name(int(t)), q) for t, q in zip(dataset.query_tenants, dataset.queries) if (owners == t).any()]
    tenants = [tenant_name(t) for t in range(args.tenants)]
    measured = Measured({"without": [], **{name: [] for name in paces}}, {name: [] for name in paces})
    with tempfile.TemporaryDirectory(prefix="tenantkv-bench-") as tmp:
        config = replace(load_config(), data_dir=Path(tmp) / "data", port=0, precompute_kv=False, warm_up=False)
        with ServerThread(config) as server, ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            served = Served(server.address, config.admin_key_path.read_text().strip())
            keys = provision(served, tenants)
            measured.upsert = ingest_vectors(served, keys, dataset.vectors, owners)
            add_kv_chunks(server, tenants, args.kv_chunks, args.kv_bytes, dataset.vectors.shape[1])
            window = functools.partial(search_window, server.address, keys, queries, args.search_s)
            for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
                measured.windows["without"].append(child.submit(window).result())
                for name, mb_per_s in paces.items():
                    backups = backups_of(server.server.runtime.store, Path(tmp) / "backups", mb_per_s)
                    done = threading.Event()
                    searching = child.submit(window)
                    backing_up = threading.Thread(target=back_up_until, args=(backups, done, measured.backup_seconds[name], measured.backup_bytes))
                    backing_up.start()
                    measured.windows[name].append(searching.result())
                    done.set()
                    backing_up.join()
    return measured


def summarise(measured: Measured, paces: dict[str, float]) -> dict:
    """Medians over the rounds: each window's Search figures and each pace's backup seconds."""
    size = measured.backup_bytes[-1]
    search = {
        name: {
            "p50_ms": statistics.median(w["p50_ms"] for w in rows),
            "p99_ms": statistics.median(w["p99_ms"] for w in rows),
            "qps": statistics.median(w["qps"] for w in rows),
            "errors": sum(sum(w["errors"].values()) for w in rows),
            "p99_ms_per_round": [w["p99_ms"] for w in rows],
        }
        for name, rows in measured.windows.items()
    }
    for name in paces:
        search[name]["p99_over_without"] = search[name]["p99_ms"] / search["without"]["p99_ms"]
    backup = {
        name: {
            "max_mb_per_s": paces[name] or None,
            "count": len(seconds),
            "seconds_median": statistics.median(seconds),
            "seconds_max": max(seconds),
            "mb_per_s": size / 2**20 / statistics.median(seconds),
        }
        for name, seconds in measured.backup_seconds.items()
    }
    return {"backup_bytes": size, "backup": backup, "search": search, "upsert": measured.upsert}


def print_table(report: dict, paces: dict[str, float]) -> None:
    print(f"\nstore of {report['backup_bytes'] / 2**20:.0f} MB; Search from {SEARCH_CLIENTS} clients, medians of {report['rounds']} rounds of {report['search_s']:.0f} s")
    print(f"{'window':<34}{'p50 ms':>8}{'p99 ms':>8}{'p99 / without':>15}{'QPS':>7}{'errors':>8}{'backup s':>10}")
    for name, row in report["search"].items():
        label = "without backup" if name == "without" else f"during backups, {paces[name]:.0f} MB/s max" if paces[name] else "during backups, unpaced"
        ratio = f"{row['p99_over_without']:.2f}x" if name in paces else ""
        seconds = f"{report['backup'][name]['seconds_median']:.2f}" if name in paces else ""
        print(f"{label:<34}{row['p50_ms']:>8.2f}{row['p99_ms']:>8.2f}{ratio:>15}{row['qps']:>7.0f}{row['errors']:>8}{seconds:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 vectors, 20 KV chunks, short windows: a smoke test")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--kv-chunks", type=int, default=200)
    parser.add_argument("--kv-bytes", type=int, default=1_700_000)
    parser.add_argument("--paced-mb-per-s", type=float, default=64.0, help="the paced backups' limit")
    parser.add_argument("--search-s", type=float, default=10.0, help="per window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "backup.json")
    args = parser.parse_args()
    if args.quick:
        args.vectors, args.tenants, args.kv_chunks, args.search_s, args.rounds = 10_000, 20, 20, 3.0, 1
    paces = {"during": 0.0, "during_paced": args.paced_mb_per_s}  # window name -> backup MB/s (0: unpaced)
    report = {
        "vectors": args.vectors, "tenants": args.tenants, "kv_chunks": args.kv_chunks, "kv_bytes_each": args.kv_bytes,
        "search_clients": SEARCH_CLIENTS, "search_s": args.search_s, "rounds": args.rounds,
        "via": "server.backup.Backups over store.backup.backup in the server's process; TenantAdmin.BackupStore is not wired yet",
        **summarise(measure(args, paces), paces),
    }
    print_table(report, paces)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
