"""Does blended prefill answer like full prefill, faster? (MuSiQue, SmolLM2, this CPU)

For each question its first 5 passages are chunks whose KV is precomputed and stored as fp16
blobs, as ingestion does. For every mode: time to first token (blob decode + key rotation +
prefill; for full prefill, the prefill of the whole prompt), agreement of the first answer token
and KL divergence of its distribution against full prefill, the first 16 greedy tokens against
full prefill, and token F1 of the answer against the gold answers (SQuAD normalisation). Also
compares the deviation that picks the tokens to recompute at ratio 0.15: values (CacheBlend), keys
(LMCache), or keys weighted by the question's attention (ours, the default).

    .venv/bin/python bench/kv.py [--quick | --full] [--data ../shared/data/musique_dev.json]

Writes bench/results/kv.json.
"""

import argparse
import collections
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import kvcodec
from musique import DEFAULT_DATA, REPO, answer, blender_for, first_token_kl, load_questions, token_f1, workload
from worker.blend import ChunkKV, Deviation, PrefillMode
from worker.config import WorkerConfig
from worker.llm import load_llm

GREEDY_MATCH_TOKENS = 16


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    prefill: PrefillMode
    ratio: float = 0.0
    deviation: Deviation = Deviation.KEY_BY_ATTENTION  # the default, as in blend_prefill


MODES = [
    Mode("full_prefill", PrefillMode.FULL_PREFILL),
    Mode("full_reuse", PrefillMode.FULL_REUSE),
    *(Mode(f"blend_{r:.2f}", PrefillMode.BLEND, r) for r in (0.05, 0.10, 0.15, 0.30)),
]
DEVIATION_MODES = [Mode(f"blend_0.15_{d.value}", PrefillMode.BLEND, 0.15, d) for d in Deviation if d is not Deviation.KEY_BY_ATTENTION]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true", help="3 questions, a smoke run")
    parser.add_argument("--full", action="store_true", help="all 100 questions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kv.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = load_questions(args.data, 3 if args.quick else 100 if args.full else 20)
    llm = load_llm(WorkerConfig())
    layout, blender = blender_for(llm)
    modes = MODES + DEVIATION_MODES
    results: dict[str, dict[str, list[float]]] = {m.name: collections.defaultdict(list) for m in modes}
    prompt_tokens = []
    for item in tqdm(questions, desc="questions", unit="q"):
        work = workload(llm, layout, blender, item)
        blobs = [kvcodec.encode(c.kv, "fp16") for c in work.chunks]  # what ingestion stored; not timed
        prompt_tokens.append(len(blender.system) + sum(len(t) for t in work.chunk_tokens) + len(work.question))
        reference = None
        for mode in modes:
            started = time.perf_counter()
            if mode.prefill is PrefillMode.FULL_PREFILL:
                chunks = [ChunkKV(tokens=t, kv=torch.empty(0)) for t in work.chunk_tokens]  # reads no KV
            else:
                chunks = [ChunkKV(tokens=t, kv=kvcodec.decode(b).float()) for t, b in zip(work.chunk_tokens, blobs)]
            outcome = answer(llm, blender, chunks, work.question, mode.prefill, mode.ratio, mode.deviation, started)
            reference = reference or outcome
            r = results[mode.name]
            r["ttft"].append(outcome.ttft_s)
            r["f1"].append(token_f1(outcome.text, work.answers))
            r["top1"].append(float(outcome.first_logits.argmax() == reference.first_logits.argmax()))
            r["kl"].append(first_token_kl(reference.first_logits, outcome.first_logits))
            r["greedy16"].append(float(outcome.tokens[:GREEDY_MATCH_TOKENS] == reference.tokens[:GREEDY_MATCH_TOKENS]))
    summary = {
        name: {
            "ttft_ms_median": statistics.median(r["ttft"]) * 1e3,
            "f1": statistics.mean(r["f1"]),
            "top1_agreement": statistics.mean(r["top1"]),
            "kl_mean": statistics.mean(r["kl"]),
            "greedy16_match": statistics.mean(r["greedy16"]),
        }
        for name, r in results.items()
    }
    full_ms = summary["full_prefill"]["ttft_ms_median"]
    print(f"\n{len(questions)} questions, median prompt {statistics.median(prompt_tokens):.0f} tokens, {args.threads} threads")
    print(f"{'mode':<20}{'TTFT ms':>9}{'x full':>8}{'F1':>7}{'top1':>7}{'KL':>8}{'greedy16':>10}")
    for name, s in summary.items():
        print(
            f"{name:<20}{s['ttft_ms_median']:>9.0f}{full_ms / s['ttft_ms_median']:>8.2f}{s['f1']:>7.3f}"
            f"{s['top1_agreement']:>7.2f}{s['kl_mean']:>8.3f}{s['greedy16_match']:>10.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "n_questions": len(questions),
        "prompt_tokens_median": statistics.median(prompt_tokens),
        "threads": args.threads,
        "modes": {m.name: summary[m.name] for m in MODES},
        "deviation_comparison": {
            Deviation.KEY_BY_ATTENTION.value: summary["blend_0.15"],
            **{m.deviation.value: summary[m.name] for m in DEVIATION_MODES},
        },
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
