"""Cutting text into chunks of at most `max_tokens` LLM tokens, at sentence boundaries where possible."""

import re
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}")


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str
    token_ids: np.ndarray  # int32 [n], the LLM's tokens without special tokens


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[np.ndarray]:
    """Each text's tokens; one batched call (the fast tokenizer's own loop) instead of one call per text."""
    if not texts:
        return []
    return [np.asarray(ids, dtype=np.int32) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def chunk_text(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int = 256) -> list[TextChunk]:
    """Greedy packing of whole sentences; a sentence longer than `max_tokens` is split by tokens.

    Packing adds up the sentences' own token counts plus one for each joining space; BPE merges
    that space into the next word, so the joined text never takes more tokens than counted.
    """
    if not text.strip():
        raise ValueError("text: must not be empty")
    if max_tokens <= 0:
        raise ValueError(f"max_tokens: must be positive, got {max_tokens}")
    pieces: list[tuple[str, int]] = []
    sentences = [sentence.strip() for sentence in SENTENCE_END.split(text) if sentence.strip()]
    for sentence, ids in zip(sentences, token_ids(tokenizer, sentences)):
        if len(ids) <= max_tokens:
            pieces.append((sentence, len(ids)))
            continue
        for i in range(0, len(ids), max_tokens - 1):
            part = tokenizer.decode(ids[i : i + max_tokens - 1]).strip()
            pieces.append((part, len(token_ids(tokenizer, [part])[0])))
    groups: list[list[str]] = []
    budget = 0
    for piece, count in pieces:
        if groups and budget + 1 + count <= max_tokens:
            groups[-1].append(piece)
            budget += 1 + count
        else:
            groups.append([piece])
            budget = count
    texts = [" ".join(g) for g in groups]
    return [TextChunk(joined, ids) for joined, ids in zip(texts, token_ids(tokenizer, texts))]
