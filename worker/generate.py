"""Greedy generation with plain full prefill, streamed token by token.

Text is detokenised incrementally: each step decodes everything generated so far and emits the
new suffix, holding back an incomplete multi-byte character until its last byte arrives.
"""

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from worker.llm import LLM


@dataclass(frozen=True, slots=True)
class GeneratedToken:
    token_id: int
    text: str  # the text this token completes; may be "" while a character is incomplete
    elapsed_s: float  # since the call started


def check_prompt(llm: LLM, prompt_ids: np.ndarray) -> torch.Tensor:
    ids = np.asarray(prompt_ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError("prompt_ids: must be a non-empty 1-d integer array")
    vocab = llm.model.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        raise ValueError(f"prompt_ids: token ids must lie in [0, {vocab})")
    limit = llm.model.config.max_position_embeddings
    if ids.size >= limit:
        raise ValueError(f"prompt_ids: {ids.size} tokens leave no room in the {limit}-token context")
    return torch.as_tensor(ids, dtype=torch.long)[None, :]


def generate_stream(llm: LLM, prompt_ids: np.ndarray, max_new_tokens: int) -> Iterator[GeneratedToken]:
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: must be positive, got {max_new_tokens}")
    inputs = check_prompt(llm, prompt_ids)
    return _stream(llm, inputs, min(max_new_tokens, llm.model.config.max_position_embeddings - inputs.shape[1]))


def _stream(llm: LLM, inputs: torch.Tensor, max_new_tokens: int) -> Iterator[GeneratedToken]:
    started = time.perf_counter()
    generated: list[int] = []
    emitted = ""
    past = None
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = llm.model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            if token in llm.stop_token_ids:
                return
            generated.append(token)
            text = llm.tokenizer.decode(generated, skip_special_tokens=True)
            delta = "" if text.endswith("\ufffd") else text[len(emitted) :]
            emitted += delta
            yield GeneratedToken(token_id=token, text=delta, elapsed_s=time.perf_counter() - started)
            inputs = torch.tensor([[token]], dtype=torch.long)
