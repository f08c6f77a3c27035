"""The RAG prompt as segments, so chunk KV computed at ingestion lines up with the prompt at question time.

    [prefix: system turn + user turn header][chunk 1 + separator]...[chunk k + separator][question + closing]

The segments come from the model's chat template rendered around a marker, so the prompt is the
template's, and full prefill and blended prefill see the very same token sequence.
"""

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

DEFAULT_SYSTEM = "You answer questions using the passages given. Answer briefly; say so if the passages do not contain the answer."
_MARKER = "\u2063PASSAGES\u2063"


@dataclass(frozen=True, slots=True)
class PromptLayout:
    prefix: np.ndarray  # int64 token ids
    separator: np.ndarray
    closing: np.ndarray

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, system: str = DEFAULT_SYSTEM) -> "PromptLayout":
        messages = [{"role": "system", "content": system}, {"role": "user", "content": _MARKER}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        before, after = rendered.split(_MARKER)
        return cls(prefix=_encode(tokenizer, before), separator=_encode(tokenizer, "\n\n"), closing=_encode(tokenizer, after))

    def chunk_segment(self, chunk_ids: np.ndarray) -> np.ndarray:
        """The tokens a chunk occupies in the prompt: its own, then the separator."""
        return np.concatenate([np.asarray(chunk_ids, dtype=np.int64), self.separator])

    def question_segment(self, tokenizer: PreTrainedTokenizerBase, question: str) -> np.ndarray:
        if not question.strip():
            raise ValueError("question: must not be empty")
        return np.concatenate([_encode(tokenizer, f"Question: {question}"), self.closing])

    def full(self, tokenizer: PreTrainedTokenizerBase, chunks: list[np.ndarray], question: str) -> np.ndarray:
        """The whole prompt's token ids, for a full prefill."""
        return np.concatenate([self.prefix, *(self.chunk_segment(c) for c in chunks), self.question_segment(tokenizer, question)])


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)
