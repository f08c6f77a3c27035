"""MuSiQue questions as blended-prefill workloads, shared by bench/kv.py and bench/codec.py."""

import collections
import json
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worker.blend import Blender, ChunkKV, Deviation, PrefillMode
from worker.generate import decode_stream
from worker.llm import LLM
from worker.prompt import PromptLayout

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "musique_dev.json"
SYSTEM = "Answer the question from the passages. Answer in a few words only, without explanation."
PASSAGES = 5
ANSWER_TOKENS = 32


@dataclass(frozen=True, slots=True)
class Workload:
    question: torch.Tensor  # the question segment's token ids
    chunks: list[ChunkKV]  # each passage's KV, computed alone after the prefix (float32)
    answers: list[str]

    @property
    def chunk_tokens(self) -> list[torch.Tensor]:
        return [c.tokens for c in self.chunks]


@dataclass(frozen=True, slots=True)
class Outcome:
    ttft_s: float
    first_logits: torch.Tensor
    tokens: list[int]
    text: str


def load_questions(path: Path, count: int) -> list[dict]:
    return json.loads(Path(path).read_text())[:count]


def blender_for(llm: LLM) -> tuple[PromptLayout, Blender]:
    layout = PromptLayout.build(llm.tokenizer, SYSTEM)
    return layout, Blender(llm.forward, torch.from_numpy(layout.prefix))


def workload(llm: LLM, layout: PromptLayout, blender: Blender, item: dict) -> Workload:
    """The question's first passages as chunks with their KV precomputed, as ingestion stores them."""
    passages = [f"{c['title']}\n{c['text']}".strip() for c in item["ctxs"][:PASSAGES]]
    tokens = [layout.chunk_segment(np.asarray(llm.tokenizer.encode(p, add_special_tokens=False))) for p in passages]
    chunks = [blender.prefill_chunk(torch.from_numpy(t)) for t in tokens]
    question = torch.from_numpy(layout.question_segment(llm.tokenizer, item["question"]))
    return Workload(question=question, chunks=chunks, answers=item["answers"])


def answer(
    llm: LLM,
    blender: Blender,
    chunks: list[ChunkKV],
    question: torch.Tensor,
    mode: PrefillMode,
    ratio: float = 0.15,
    deviation: Deviation = Deviation.KEY_BY_ATTENTION,
    started: float | None = None,
) -> Outcome:
    """Prefill in `mode`, then a greedy answer; time to first token counts from `started` (default: now)."""
    started = time.perf_counter() if started is None else started
    prefill = blender.blend_prefill(chunks, question, recompute_ratio=ratio, mode=mode, deviation=deviation, reserve=ANSWER_TOKENS)
    ttft = time.perf_counter() - started
    generated = list(decode_stream(llm, prefill.logits, prefill.kv, ANSWER_TOKENS, started))
    text = "".join(t.text for t in generated).strip().split("\n")[0]
    return Outcome(ttft, prefill.logits, [t.token_id for t in generated], text)


def normalize(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation or articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, answers: list[str]) -> float:
    best = 0.0
    for answer_text in answers:
        pred, gold = normalize(prediction), normalize(answer_text)
        common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def first_token_kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(reference || logits) of the first answer token's distribution."""
    ref = reference.log_softmax(-1)
    return float((ref.exp() * (ref - logits.log_softmax(-1))).sum())
