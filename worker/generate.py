"""Greedy decoding with our own forward pass, streamed token by token.

Text is detokenised incrementally: each step decodes everything generated so far and emits the
new suffix, holding back an incomplete multi-byte character until its last byte arrives.
"""

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from worker.errors import WorkerInputError
from worker.llama import KVBuffer
from worker.llm import LLM


@dataclass(frozen=True, slots=True)
class GeneratedToken:
    token_id: int
    text: str  # the text this token completes; may be "" while a character is incomplete
    elapsed_s: float  # since generation started (prefill included)


def generate_stream(llm: LLM, prompt_ids: np.ndarray, max_new_tokens: int) -> Iterator[GeneratedToken]:
    """Plain full prefill of `prompt_ids`, then greedy decoding."""
    check_max_new_tokens(max_new_tokens)
    ids = llm.forward.check_tokens(torch.as_tensor(np.asarray(prompt_ids)), "prompt_ids")
    if len(ids) == 0 or len(ids) >= llm.forward.max_positions:
        raise WorkerInputError(f"prompt_ids: need 1 to {llm.forward.max_positions - 1} tokens, got {len(ids)}")
    return _prefill_then_decode(llm, ids, max_new_tokens)


def _prefill_then_decode(llm: LLM, ids: torch.Tensor, max_new_tokens: int) -> Iterator[GeneratedToken]:
    started = time.perf_counter()
    kv = llm.forward.new_buffer(len(ids) + max_new_tokens)
    logits = llm.forward.forward(ids, kv)[-1]
    yield from decode_stream(llm, logits, kv, max_new_tokens, started)


def check_max_new_tokens(max_new_tokens: int) -> None:
    if max_new_tokens <= 0:
        raise WorkerInputError(f"max_new_tokens: must be positive, got {max_new_tokens}")


def decode_stream(llm: LLM, logits: torch.Tensor, kv: KVBuffer, max_new_tokens: int, started: float) -> Iterator[GeneratedToken]:
    """Greedy tokens from the logits after a prefill, extending `kv`, until a stop token or the budget."""
    generated: list[int] = []
    emitted = ""
    budget = min(max_new_tokens, llm.forward.max_positions - kv.length)
    for step in range(budget):
        token = int(logits.argmax())
        if token in llm.stop_token_ids:
            return
        generated.append(token)
        text = llm.tokenizer.decode(generated, skip_special_tokens=True)
        delta = "" if text.endswith("\ufffd") else text[len(emitted) :]
        emitted += delta
        yield GeneratedToken(token_id=token, text=delta, elapsed_s=time.perf_counter() - started)
        if step + 1 < budget:
            logits = llm.forward.forward(torch.tensor([token], device=llm.forward.device), kv)[-1]
