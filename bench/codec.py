"""How small can stored KV get without changing answers? (SmolLM2 KV of MuSiQue passages, this CPU)

For each codec: compression ratio against plain fp16 bytes, encode and decode speed (MB/s of
fp16-equivalent data, median over chunks, one thread), and answer quality through blended
prefill at ratio 0.15 with the codec's decoded KV: first-token top-1 agreement with full prefill
(uncompressed), KL divergence of that token's distribution from full prefill's, and token F1.
The `none` row is blending with uncompressed float32 KV.

    .venv/bin/python bench/codec.py [--quick | --full] [--data ../shared/data/musique_dev.json]

Writes bench/results/codec.json.
"""

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import kvcodec
from musique import DEFAULT_DATA, REPO, answer, blender_for, first_token_kl, load_questions, token_f1, workload
from worker.blend import ChunkKV, PrefillMode
from worker.config import WorkerConfig
from worker.llm import load_llm


def timed(fn, *args) -> tuple[object, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="3 questions, a smoke run")
    parser.add_argument("--full", action="store_true", help="all 100 questions")
    parser.add_argument("--threads", type=int, default=2, help="for the model; codecs are timed on one thread")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "codec.json")
    args = parser.parse_args()
    questions = load_questions(args.data, 3 if args.quick else 100 if args.full else 20)
    torch.set_num_threads(args.threads)
    llm = load_llm(WorkerConfig())
    layout, blender = blender_for(llm)
    codecs = sorted(kvcodec.CODECS)
    stats: dict[str, dict[str, list[float]]] = {c: collections.defaultdict(list) for c in ["none", *codecs]}
    for item in tqdm(questions, desc="questions", unit="q"):
        work = workload(llm, layout, blender, item)
        reference = answer(llm, blender, work.chunks, work.question, PrefillMode.FULL_PREFILL)
        for codec in ["none", *codecs]:
            chunks = work.chunks
            if codec != "none":
                torch.set_num_threads(1)
                decoded = []
                for chunk in work.chunks:
                    fp16_bytes = chunk.kv.numel() * 2
                    blob, encode_s = timed(kvcodec.encode, chunk.kv, codec)
                    kv, decode_s = timed(kvcodec.decode, blob)
                    stats[codec]["ratio"].append(fp16_bytes / len(blob))
                    stats[codec]["encode"].append(fp16_bytes / encode_s / 1e6)
                    stats[codec]["decode"].append(fp16_bytes / decode_s / 1e6)
                    decoded.append(ChunkKV(tokens=chunk.tokens, kv=kv.float()))
                torch.set_num_threads(args.threads)
                chunks = decoded
            outcome = answer(llm, blender, chunks, work.question, PrefillMode.BLEND, 0.15)
            stats[codec]["top1"].append(float(outcome.first_logits.argmax() == reference.first_logits.argmax()))
            stats[codec]["kl"].append(first_token_kl(reference.first_logits, outcome.first_logits))
            stats[codec]["f1"].append(token_f1(outcome.text, work.answers))
    summary = {}
    for codec, s in stats.items():
        row = {"top1_agreement": statistics.mean(s["top1"]), "first_token_kl": statistics.mean(s["kl"]), "f1": statistics.mean(s["f1"])}
        if codec != "none":
            row |= {
                "ratio_vs_fp16": statistics.mean(s["ratio"]),
                "encode_mb_s": statistics.median(s["encode"]),
                "decode_mb_s": statistics.median(s["decode"]),
            }
        summary[codec] = row
    print(f"\n{len(questions)} questions x 5 passages; quality through blend 0.15 against uncompressed full prefill")
    print(f"{'codec':<8}{'ratio':>8}{'enc MB/s':>10}{'dec MB/s':>10}{'top1':>7}{'KL':>7}{'F1':>7}")
    for codec, row in summary.items():
        print(
            f"{codec:<8}{row.get('ratio_vs_fp16', 1.0):>8.2f}{row.get('encode_mb_s', float('nan')):>10.0f}"
            f"{row.get('decode_mb_s', float('nan')):>10.0f}{row['top1_agreement']:>7.2f}{row['first_token_kl']:>7.3f}{row['f1']:>7.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "n_questions": len(questions),
        "uncompressed_blend": summary.pop("none"),
        "codecs": summary,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
