"""Continuous batching: answers/s and tokens/s of the engine serial against batched, and ingestion per chunk against batched.

Decode: closed-loop clients (1, 4, 8, 16) each ask MuSiQue questions straight to the engine (no
gRPC), each with the first 3 chunks the chunker cuts from the question's passages (256 tokens
each, KV precomputed as ingestion stores it) and exactly `--new-tokens` new tokens (stop tokens
ignored, so decoding is most of the work). `serial` is the same engine with max_batch_size 1:
one request at a time, as before batching. Ingestion: the same chunks' embedding and KV
precompute one chunk a call against all in one call, beside the model's own full-prefill
tokens/s on one long prompt (the compute ceiling). Results to bench/results/batching.json.

GPU (`gpu`, only where torch sees one; `--gpu-only` runs just it and adds it to the JSON):
random weights of SmolLM2-135M's, Llama-3.2-1B's and Llama-3-8B's shapes in bf16
(bench/kernel_speed.py's), batched decode tokens/s at 1, 8 and 16 sequences of an 850-token
prompt, the eager step against CUDA graphs (worker.decode_graphs), the greedy tokens of the two
compared over the first 16 steps, and time to first token of blended (0.15) against full prefill.
`--gpu-only --quick` runs that section on the CPU at a toy size (`SMOKE`; no graphs there: the
padded step runs eagerly), a smoke run of its code.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.kernel_speed import MODEL_SHAPES, bench_prefill, random_forward  # noqa: E402
from worker.blend import PrefillMode  # noqa: E402
from worker.chunker import chunk_text  # noqa: E402
from worker.config import WorkerConfig  # noqa: E402
from worker.decode_graphs import StaticDecode  # noqa: E402
from worker.embedder import Embedder  # noqa: E402
from worker.engine import Engine, EngineConfig, RetrievedChunk  # noqa: E402
from worker.llama import KVBuffer, LlamaForward  # noqa: E402
from worker.llm import LLM, load_llm  # noqa: E402
from worker.scheduler import SchedulerConfig  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "musique_dev.json"
CHUNKS_PER_QUESTION = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Ask:
    chunks: list[RetrievedChunk]
    question: str


def chunks_of(llm: LLM, item: dict) -> list[np.ndarray]:
    """The token ids of the first chunks the chunker cuts from the question's passages."""
    text = "\n\n".join(f"{c['title']}\n{c['text']}".strip() for c in item["ctxs"])
    return [c.token_ids for c in chunk_text(text, llm.tokenizer, 256)[:CHUNKS_PER_QUESTION]]


def asks(engine: Engine, items: list[dict]) -> list[Ask]:
    """Each question with its chunks' KV precomputed and encoded, as the store would hand it over."""
    result = []
    for n, item in enumerate(items):
        ids = chunks_of(engine.llm, item)
        blobs = engine.encode_chunks_kv(ids)
        chunks = [RetrievedChunk(n * 10 + i, x, lambda b=b: b, cache_key=f"{n}/{i}") for i, (x, b) in enumerate(zip(ids, blobs))]
        result.append(Ask(chunks, item["question"]))
    return result


def closed_loop(engine: Engine, work: list[Ask], clients: int, answers_each: int, new_tokens: int) -> dict[str, float]:
    """`clients` threads, each asking its next question as soon as its last answer ended."""
    ttfts: list[float] = []
    tokens = 0
    lock = threading.Lock()

    def client(c: int) -> None:
        nonlocal tokens
        for k in range(answers_each):
            ask = work[(c * answers_each + k) % len(work)]
            got = list(engine.answer(ask.chunks, ask.question, PrefillMode.BLEND, new_tokens, tenant=f"client-{c}"))
            assert len(got) == new_tokens
            with lock:
                ttfts.append(got[0].elapsed_s)
                tokens += len(got)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "tokens_per_s": tokens / wall,
        "answers_per_s": len(ttfts) / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1e3,
        "ttft_p99_ms": float(np.percentile(ttfts, 99)) * 1e3,
    }


def ingest(engine: Engine, embedder: Embedder, llm: LLM, items: list[dict], repeats: int) -> dict[str, float]:
    """Chunk KV and embedding, one chunk a call against all chunks in one call (best of `repeats`, alternated)."""
    ids = [x for item in items for x in chunks_of(llm, item)]
    texts = [llm.tokenizer.decode(x) for x in ids]
    tokens = sum(len(engine.layout.chunk_segment(x)) for x in ids)
    runs = {
        "per_chunk": lambda: [engine.chunks_kv([x]) for x in ids],
        "batched": lambda: engine.chunks_kv(ids),
        "embed_per_chunk": lambda: [embedder.embed([t]) for t in texts],
        "embed_batched": lambda: embedder.embed(texts),
    }
    best = {name: float("inf") for name in runs}
    for _ in tqdm(range(repeats), desc="ingestion", unit="round"):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    long_prompt = torch.from_numpy(np.concatenate(ids))[:2048]
    ceiling = float("inf")
    for _ in range(repeats):
        kv = llm.forward.new_buffer(len(long_prompt))
        started = time.perf_counter()
        llm.forward.forward(long_prompt, kv)
        ceiling = min(ceiling, time.perf_counter() - started)
    return {
        "chunks": len(ids),
        "tokens": tokens,
        "per_chunk_tokens_per_s": tokens / best["per_chunk"],
        "batched_tokens_per_s": tokens / best["batched"],
        "per_chunk_chunks_per_s": len(ids) / best["per_chunk"],
        "batched_chunks_per_s": len(ids) / best["batched"],
        "embed_per_chunk_chunks_per_s": len(ids) / best["embed_per_chunk"],
        "embed_batched_chunks_per_s": len(ids) / best["embed_batched"],
        "prefill_ceiling_tokens_per_s": len(long_prompt) / ceiling,
        "prefill_ceiling_prompt_tokens": len(long_prompt),
    }


AGREEMENT_STEPS = 16


def decode_run(decoder: LlamaForward | StaticDecode, kv: KVBuffer, sequences: int, steps: int) -> tuple[float, list[list[int]]]:
    """Batched decode tokens/s of `sequences` copies of `kv`, each step fed the last step's greedy
    tokens (one device sync a step, as the scheduler's), after 3 steps of warm-up (graph captures);
    and the tokens of the first AGREEMENT_STEPS steps."""
    device = kv.keys.device
    with torch.inference_mode():
        batch = decoder.new_decode_batch()
        for _ in range(sequences):
            batch.add(kv, room=3 + steps)
        ids, tokens = torch.zeros(sequences, dtype=torch.long), []
        for step in range(3 + steps):
            if step == 3:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
            ids = decoder.decode(ids, batch).argmax(-1).cpu()
            tokens.append(ids.tolist())
        elapsed = time.perf_counter() - started
    return sequences * steps / elapsed, tokens[:AGREEMENT_STEPS]


# the gpu section at a toy size, on the CPU: SmolLM2's shape cut to 2 narrow layers and a 512-token vocabulary
SMOKE = dict(
    shapes=("smollm2_135m",), batch_sizes=(1, 3), prompt_tokens=40, steps=2, repeats=1,
    overrides=dict(num_hidden_layers=2, vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2),
)


def gpu_section(
    device: torch.device,
    shapes: tuple[str, ...] = tuple(MODEL_SHAPES),
    batch_sizes: tuple[int, ...] = (1, 8, 16),
    prompt_tokens: int = 850,
    steps: int = 64,
    repeats: int = 5,
    overrides: dict | None = None,
) -> dict:
    """Per model shape (random weights on `device`, bf16 on a GPU): batched decode tokens/s, the
    eager step against CUDA graphs of padded shapes (on a CPU the padded step runs eagerly), the
    share of greedy tokens the two agree on over the first steps, and bench/kernel_speed.py's
    TTFT of full prefill, full reuse and blending. `overrides`: LlamaConfig fields replacing the
    shapes' (smoke runs)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict = {"device": name, "prompt_tokens": prompt_tokens, "steps": steps, "shapes": {}}
    for shape in tqdm(shapes, desc="gpu section", unit="shape"):
        forward = random_forward(shape, device, **(overrides or {}))
        kv = forward.new_buffer(prompt_tokens)
        with torch.inference_mode():
            forward.forward(torch.randint(0, forward.vocab_size, (prompt_tokens,), generator=torch.Generator().manual_seed(3)), kv)
        row: dict = {"decode": {}}
        for n in batch_sizes:
            eager, eager_tokens = decode_run(forward, kv, n, steps)
            graphs, graph_tokens = decode_run(StaticDecode(forward, max(batch_sizes)), kv, n, steps)
            same = sum(a == b for x, y in zip(eager_tokens, graph_tokens) for a, b in zip(x, y))
            row["decode"][str(n)] = {
                "eager_tokens_per_s": eager,
                "graphs_tokens_per_s": graphs,
                "graphs_over_eager": graphs / eager,
                "greedy_agreement": same / (n * len(eager_tokens)),
            }
        row["prefill"] = bench_prefill(forward, repeats)
        row["prefill"]["full_over_blend"] = row["prefill"]["full_prefill_ms"] / row["prefill"]["blend_0.15_ms"]
        report["shapes"][shape] = row
        del forward, kv
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def print_gpu_table(gpu: dict) -> None:
    print(f"\n{gpu['device']}: random weights, {gpu['prompt_tokens']}-token prompts, {gpu['steps']} decode steps")
    print(f"{'shape':>14}{'batch':>7}{'eager tok/s':>13}{'graphs tok/s':>14}{'x':>6}{'agree':>7}")
    for shape, row in gpu["shapes"].items():
        for n, d in row["decode"].items():
            print(
                f"{shape:>14}{n:>7}{d['eager_tokens_per_s']:>13.1f}{d['graphs_tokens_per_s']:>14.1f}"
                f"{d['graphs_over_eager']:>6.2f}{d['greedy_agreement']:>7.2f}"
            )
        p = row["prefill"]
        print(
            f"{shape:>14}  TTFT ms: full prefill {p['full_prefill_ms']:.1f}, blend {p['blend_0.15_ms']:.1f} "
            f"({p['full_over_blend']:.2f}x), full reuse {p['full_reuse_ms']:.1f}"
        )


def gpu_only(args: argparse.Namespace) -> None:
    """The gpu section alone (on the CPU with `--quick`: a smoke run), added to the results file."""
    if args.quick:
        gpu = gpu_section(torch.device("cpu"), **SMOKE)
        print_gpu_table(gpu)
        return
    if not torch.cuda.is_available():
        raise SystemExit("--gpu-only: torch sees no GPU (add --quick for a CPU smoke run)")
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report["gpu"] = gpu_section(torch.device("cuda"))
    write(args.out, report)
    print_gpu_table(report["gpu"])
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="clients 1 and 2, 8 new tokens, 1 ingestion question: a smoke run")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--answers-per-client", type=int, default=1)
    parser.add_argument("--ingest-questions", type=int, default=6, help="MuSiQue questions whose 3 chunks are ingested")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=WorkerConfig().cache_dir)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "batching.json")
    parser.add_argument("--gpu-only", action="store_true", help="only the gpu section (with --quick: on the CPU, tiny, not written)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpu_only:
        gpu_only(args)
        return
    clients = [1, 2] if args.quick else [int(c) for c in args.clients.split(",")]
    new_tokens = 8 if args.quick else args.new_tokens
    ingest_questions = 1 if args.quick else args.ingest_questions
    items = json.loads(args.data.read_text())
    # exactly new_tokens a request: no stop token ends an answer early
    llm = dataclasses.replace(load_llm(WorkerConfig(cache_dir=args.cache_dir)), stop_token_ids=frozenset())
    embedder = Embedder.default()
    modes = {"serial": SchedulerConfig(max_batch_size=1), "batched": SchedulerConfig(max_batch_size=16)}
    engines = {name: Engine(llm, EngineConfig(scheduler=config)) for name, config in modes.items()}
    report: dict = {"new_tokens": new_tokens, "answers_per_client": args.answers_per_client, "threads": args.threads}
    report["load_average_at_start"] = os.getloadavg()  # shared machine: past the bench's own ~2, others' work slows both modes unevenly
    report["ingest"] = ingest(engines["batched"], embedder, llm, items[:ingest_questions], repeats=1 if args.quick else 2)
    work = asks(engines["batched"], items[: max(clients) * args.answers_per_client])
    report["prompt_tokens_median"] = statistics.median(engines["batched"].prompt_tokens(a.chunks, a.question) for a in work)
    report["decode"] = {name: {} for name in modes}
    for n in tqdm(clients, desc="clients", unit="level"):
        for name, engine in engines.items():
            report["decode"][name][str(n)] = closed_loop(engine, work, n, args.answers_per_client, new_tokens)
        report["load_average_at_end"] = os.getloadavg()
        write(args.out, report)  # a long run keeps each level it finished
    for engine in engines.values():
        engine.close()
    if torch.cuda.is_available():
        report["gpu"] = gpu_section(torch.device("cuda"))
        write(args.out, report)
    print_table(report)
    if "gpu" in report:
        print_gpu_table(report["gpu"])
    print(f"wrote {args.out}")


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def print_table(report: dict) -> None:
    print(
        f"\nprompt tokens median {report['prompt_tokens_median']:.0f}, {report['new_tokens']} new tokens, "
        f"{report['answers_per_client']} answer(s) a client, {report['threads']} threads, "
        f"load average {report['load_average_at_start'][0]:.2f} at start, {report['load_average_at_end'][0]:.2f} at end"
    )
    print(f"{'clients':>8}{'serial tok/s':>14}{'batched tok/s':>15}{'x':>6}{'serial TTFT p50/p99 ms':>25}{'batched TTFT p50/p99 ms':>26}")
    for n, s in report["decode"]["serial"].items():
        b = report["decode"]["batched"][n]
        print(
            f"{n:>8}{s['tokens_per_s']:>14.1f}{b['tokens_per_s']:>15.1f}{b['tokens_per_s'] / s['tokens_per_s']:>6.2f}"
            f"{s['ttft_p50_ms']:>14.0f} / {s['ttft_p99_ms']:<8.0f}{b['ttft_p50_ms']:>15.0f} / {b['ttft_p99_ms']:<8.0f}"
        )
    i = report["ingest"]
    print(
        f"ingestion of {i['chunks']} chunks ({i['tokens']} tokens): KV per chunk {i['per_chunk_tokens_per_s']:.0f} tok/s, "
        f"batched {i['batched_tokens_per_s']:.0f} tok/s, full-prefill ceiling {i['prefill_ceiling_tokens_per_s']:.0f} tok/s; "
        f"embedding per chunk {i['embed_per_chunk_chunks_per_s']:.1f} chunks/s, batched {i['embed_batched_chunks_per_s']:.1f} chunks/s"
    )


if __name__ == "__main__":
    main()
