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


class Greedy:
    """One request's greedy decoding: picks each token from its logits, stops at a stop token or
    once `max_new_tokens` (or the positions the model has left) are generated, and detokenises."""

    def __init__(self, llm: LLM, max_new_tokens: int, kv_length: int, started: float) -> None:
        self.llm = llm
        self.budget = min(max_new_tokens, llm.forward.max_positions - kv_length)
        self.started = started
        self.generated: list[int] = []
        self.emitted = ""
        self.stopped = False

    @property
    def done(self) -> bool:
        return self.stopped or len(self.generated) >= self.budget

    def push(self, token: int) -> GeneratedToken | None:
        """Take the token the logits picked (their argmax: callers take it, for a batch in one
        device call); None (and done) if it is a stop token."""
        if token in self.llm.stop_token_ids:
            self.stopped = True
            return None
        self.generated.append(token)
        text = self.llm.tokenizer.decode(self.generated, skip_special_tokens=True)
        delta = "" if text.endswith("\ufffd") else text[len(self.emitted) :]
        self.emitted += delta
        return GeneratedToken(token_id=token, text=delta, elapsed_s=time.perf_counter() - self.started)


def decode_stream(llm: LLM, logits: torch.Tensor, kv: KVBuffer, max_new_tokens: int, started: float) -> Iterator[GeneratedToken]:
    """Greedy tokens from the logits after a prefill, extending `kv`, one request alone (the engine batches requests instead)."""
    greedy = Greedy(llm, max_new_tokens, kv.length, started)
    while not greedy.done:
        token = greedy.push(int(logits.argmax()))
        if token is None:
            return
        yield token
        if not greedy.done:
            logits = llm.forward.forward(torch.tensor([token.token_id], device=llm.forward.device), kv)[-1]
