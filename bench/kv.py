"""Does blended prefill answer like full prefill, faster? (MuSiQue, SmolLM2, this CPU)

For each question: its first 5 passages are chunks whose KV is precomputed and stored (fp16
blobs in memory), as ingestion does. Then for every mode: time to first token (blob decode +
key rotation + prefill; for full prefill, the prefill of the whole prompt), the first answer
token's agreement and KL divergence against full prefill, the first 16 greedy tokens against full
prefill, and token F1 of the answer against the gold answers (SQuAD normalisation).

    .venv/bin/python bench/kv.py [--quick | --full] [--data ../shared/data/musique_dev.json]

Writes bench/results/kv.json.
"""

import argparse
import collections
import json
import re
import statistics
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import kvcodec
from worker.blend import Blender, ChunkKV, Deviation, PrefillMode
from worker.config import WorkerConfig
from worker.generate import decode_stream
from worker.llm import load_llm
from worker.prompt import PromptLayout

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "Answer the question from the passages. Answer in a few words only, without explanation."
PASSAGES = 5
ANSWER_TOKENS = 32
GREEDY_MATCH_TOKENS = 16


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    prefill: PrefillMode
    ratio: float = 0.0
    deviation: Deviation = Deviation.VALUE


MODES = [
    Mode("full_prefill", PrefillMode.FULL_PREFILL),
    Mode("full_reuse", PrefillMode.FULL_REUSE),
    *(Mode(f"blend_{r:.2f}", PrefillMode.BLEND, r) for r in (0.05, 0.10, 0.15, 0.30)),
]
DEVIATION_MODES = [Mode(f"blend_0.15_{d.value}", PrefillMode.BLEND, 0.15, d) for d in Deviation]


def normalize(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def token_f1(prediction: str, answers: list[str]) -> float:
    best = 0.0
    for answer in answers:
        pred, gold = normalize(prediction), normalize(answer)
        common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@dataclass
class Outcome:
    ttft_s: float
    first_logits: torch.Tensor
    tokens: list[int]
    text: str


def run_mode(llm, blender: Blender, blobs: list[bytes], chunk_tokens: list[torch.Tensor], question: torch.Tensor, mode: Mode) -> Outcome:
    """Time to first token from stored blobs (decode, rotate, prefill), then the greedy answer."""
    started = time.perf_counter()
    if mode.prefill is PrefillMode.FULL_PREFILL:
        chunks = [ChunkKV(tokens=t, kv=torch.empty(0)) for t in chunk_tokens]  # full prefill reads no KV
    else:
        chunks = [ChunkKV(tokens=t, kv=kvcodec.decode(b).to(torch.float32)) for t, b in zip(chunk_tokens, blobs)]
    prefill = blender.blend_prefill(
        chunks, question, recompute_ratio=mode.ratio, mode=mode.prefill, deviation=mode.deviation, reserve=ANSWER_TOKENS
    )
    ttft = time.perf_counter() - started
    generated = list(decode_stream(llm, prefill.logits, prefill.kv, ANSWER_TOKENS, started))
    text = "".join(t.text for t in generated).strip().split("\n")[0]
    return Outcome(ttft, prefill.logits, [t.token_id for t in generated], text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "musique_dev.json")
    parser.add_argument("--quick", action="store_true", help="3 questions, a smoke run")
    parser.add_argument("--full", action="store_true", help="all 100 questions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kv.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = json.loads(args.data.read_text())
    count = 3 if args.quick else len(questions) if args.full else 20
    llm = load_llm(WorkerConfig())
    layout = PromptLayout.build(llm.tokenizer, SYSTEM)
    blender = Blender(llm.forward, torch.from_numpy(layout.prefix))
    modes = MODES + DEVIATION_MODES
    results: dict[str, dict[str, list[float]]] = {m.name: collections.defaultdict(list) for m in modes}
    prompt_tokens = []
    for item in tqdm(questions[:count], desc="questions", unit="q"):
        passages = [f"{c['title']}\n{c['text']}".strip() for c in item["ctxs"][:PASSAGES]]
        chunk_tokens = [
            torch.from_numpy(layout.chunk_segment(np.asarray(llm.tokenizer.encode(p, add_special_tokens=False)))) for p in passages
        ]
        blobs = [kvcodec.encode(blender.prefill_chunk(t).kv, "fp16") for t in chunk_tokens]  # ingestion, not timed
        question = torch.from_numpy(layout.question_segment(llm.tokenizer, item["question"]))
        prompt_tokens.append(len(blender.system) + sum(len(t) for t in chunk_tokens) + len(question))
        reference = None
        for mode in modes:
            outcome = run_mode(llm, blender, blobs, chunk_tokens, question, mode)
            reference = reference or outcome
            ref_logp = reference.first_logits.log_softmax(-1)
            r = results[mode.name]
            r["ttft"].append(outcome.ttft_s)
            r["f1"].append(token_f1(outcome.text, item["answers"]))
            r["top1"].append(float(outcome.first_logits.argmax() == reference.first_logits.argmax()))
            r["kl"].append(float((ref_logp.exp() * (ref_logp - outcome.first_logits.log_softmax(-1))).sum()))
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
    print(f"\n{count} questions, median prompt {statistics.median(prompt_tokens):.0f} tokens, {args.threads} threads")
    print(f"{'mode':<22}{'TTFT ms':>10}{'x full':>8}{'F1':>7}{'top1':>7}{'KL':>8}{'greedy16':>10}")
    for name, s in summary.items():
        print(
            f"{name:<22}{s['ttft_ms_median']:>10.0f}{full_ms / s['ttft_ms_median']:>8.2f}{s['f1']:>7.3f}"
            f"{s['top1_agreement']:>7.2f}{s['kl_mean']:>8.3f}{s['greedy16_match']:>10.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "n_questions": count,
                "prompt_tokens_median": statistics.median(prompt_tokens),
                "threads": args.threads,
                "modes": {m.name: summary[m.name] for m in MODES},
                "deviation_comparison": {m.deviation.value: summary[m.name] for m in DEVIATION_MODES},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
