"""Does the server hold 100,000 tenants? Start-up and memory against an empty store, and paged ListTenants.

A store of N tenants (default 100,000), each with one tenant API key and one document of a few
chunks (given vectors, so no model runs at ingestion), is written directly through the `Store`
API, as a server would write it, without fsync. Then, in the same run and alternating, a
`tenantkv serve` child process (precompute_kv and warm-up off) is started over an empty store
and over that store: seconds from launch to SERVING (the index is rebuilt from the store at
start) and the server's RSS once SERVING, split into anonymous memory and file-backed pages
(LMDB's memory map, which the kernel can reclaim). Over the full store it times one ListTenants page
(100 and 1000 tenants, with and without usage) and a full listing paged 1000 at a time, and
measures what one unpaged reply with every tenant's usage would have weighed.

The machine is shared: compare the empty and full columns of one run, not times across runs.

    .venv/bin/python bench/tenants.py [--quick] [--tenants 100000] [--chunks 3] [--repeats 2]

Writes bench/results/tenants.json.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protos.tenantkv.v1 import tenant_admin_pb2  # noqa: E402
from client.api import MAX_MESSAGE_BYTES, Client  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.process import ServerProcess  # noqa: E402
from store.records import ChunkInput, DocumentInput, KeyScope  # noqa: E402
from store.store import Store  # noqa: E402

SERVER_SETTINGS = {"precompute_kv": False, "warm_up": False}
PAGE_TIMINGS = 5  # repeats of each single-page call; the median is kept


def populate(data_dir: Path, tenants: int, chunks: int) -> float:
    """Write `tenants` tenants, each with one key and one document of `chunks` chunks; seconds taken."""
    config = ServerConfig(data_dir=data_dir).store_config()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with Store(replace(config, sync=False)) as store:
        for i in tqdm(range(tenants), desc="tenants", unit="tenant", mininterval=5):
            name = f"t{i:06d}"
            store.create_tenant(name)
            store.create_api_key(KeyScope.TENANT, name, frozenset({"read", "write"}))
            vectors = rng.standard_normal((chunks, config.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            document = DocumentInput(
                external_id="doc",
                metadata={"tenant": i},
                chunks=[
                    ChunkInput(text=f"passage {j} of tenant {i}", token_ids=np.arange(j, j + 8, dtype=np.int32), vector=v)
                    for j, v in enumerate(vectors)
                ],
            )
            store.upsert(name, [document])
    return time.perf_counter() - started


def start_up(data_dir: Path) -> tuple[float, dict[str, float], ServerProcess]:
    """Seconds from launch to SERVING and memory then; the server is left running."""
    server = ServerProcess(data_dir, SERVER_SETTINGS)
    started = time.perf_counter()
    server.start(timeout_s=1800)
    return time.perf_counter() - started, {k: v / 2**20 for k, v in server.memory_bytes().items()}, server


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def listing(server: ServerProcess) -> dict:
    """Single pages and full paged listings against a running server over the full store."""
    with Client(server.address, server.admin_key) as client:
        client.list_tenants_page(page_size=1)  # opens the channel
        results = {
            f"page_{size}{'_usage' if usage else ''}_ms": median_ms(
                lambda: client.list_tenants_page(page_size=size, with_usage=usage), PAGE_TIMINGS
            )
            for size in (100, 1000)
            for usage in (False, True)
        }
        for usage in (False, True):
            started = time.perf_counter()
            everyone = client.list_tenants(with_usage=usage, page_size=1000)
            results[f"full_listing{'_usage' if usage else ''}_s"] = time.perf_counter() - started
        results["listed"] = len(everyone)
        results["page_1000_usage_bytes"] = client.list_tenants_page(page_size=1000, with_usage=True).ByteSize()
        # One reply with every tenant and its usage, as ListTenants answered before it was paged.
        results["unpaged_reply_bytes"] = tenant_admin_pb2.ListTenantsResponse(tenants=everyone).ByteSize()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 tenants, one start of each")
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=3, help="chunks per tenant (one document)")
    parser.add_argument("--repeats", type=int, default=2, help="starts of each server, alternating")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tenants.json")
    args = parser.parse_args()
    if args.quick:
        args.tenants, args.repeats = 2_000, 1

    with tempfile.TemporaryDirectory(prefix="tenantkv-bench-tenants-") as tmp:
        empty_dir, full_dir = Path(tmp) / "empty", Path(tmp) / "full"
        populate_s = populate(full_dir, args.tenants, args.chunks)
        store_bytes = sum(f.stat().st_size for f in full_dir.rglob("*") if f.is_file())
        starts: dict[str, list[tuple[float, dict[str, float]]]] = {"empty": [], "full": []}
        listed: dict = {}
        for repeat in range(args.repeats):
            for kind, data_dir in (("empty", empty_dir), ("full", full_dir)):
                seconds, memory, server = start_up(data_dir)
                try:
                    starts[kind].append((seconds, memory))
                    if kind == "full" and repeat == 0:
                        listed = listing(server)
                finally:
                    server.kill()

    summary = {
        kind: {
            "start_s_median": statistics.median(s for s, _ in runs),
            **{f"{part}_mb_median": statistics.median(m[part] for _, m in runs) for part in ("rss", "anon", "file")},
            "start_s": [round(s, 1) for s, _ in runs],
            "rss_mb": [round(m["rss"]) for _, m in runs],
        }
        for kind, runs in starts.items()
    }
    result = {
        "tenants": args.tenants,
        "chunks_per_tenant": args.chunks,
        "repeats": args.repeats,
        "server_settings": SERVER_SETTINGS,
        "populate_s": populate_s,
        "store_mb": store_bytes / 2**20,
        "start": summary,
        "start_ratio": summary["full"]["start_s_median"] / summary["empty"]["start_s_median"],
        **{f"{part}_added_mb": summary["full"][f"{part}_mb_median"] - summary["empty"][f"{part}_mb_median"] for part in ("rss", "anon", "file")},
        "listing": listed,
        "max_message_bytes": MAX_MESSAGE_BYTES,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{args.tenants:,} tenants x {args.chunks} chunks and 1 key, store {result['store_mb']:.0f} MB, written in {populate_s:.0f} s")
    print("| store | to SERVING s | RSS MB | anonymous MB | file-backed MB | each start |")
    print("|---|---:|---:|---:|---:|---|")
    for kind, s in summary.items():
        print(
            f"| {kind} | {s['start_s_median']:.1f} | {s['rss_mb_median']:.0f} | {s['anon_mb_median']:.0f} | "
            f"{s['file_mb_median']:.0f} | {s['start_s']} s, {s['rss_mb']} MB |"
        )
    print(
        f"full / empty start-up: {result['start_ratio']:.2f}x; added RSS {result['rss_added_mb']:.0f} MB "
        f"(anonymous {result['anon_added_mb']:.0f}, file-backed {result['file_added_mb']:.0f})"
    )
    print("| ListTenants | ms |")
    print("|---|---:|")
    for key, value in listed.items():
        if key.endswith("_ms"):
            print(f"| {key[:-3]} | {value:.1f} |")
    print(f"| full listing, pages of 1000 | {listed['full_listing_s'] * 1e3:.0f} |")
    print(f"| full listing with usage, pages of 1000 | {listed['full_listing_usage_s'] * 1e3:.0f} |")
    print(
        f"one page of 1000 with usage: {listed['page_1000_usage_bytes']:,} bytes; all {listed['listed']:,} in one reply "
        f"would be {listed['unpaged_reply_bytes']:,} bytes (limit {MAX_MESSAGE_BYTES:,})"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
