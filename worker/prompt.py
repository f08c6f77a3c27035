"""The RAG prompt: system message, then the retrieved passages and the question in the user turn."""

import numpy as np
from transformers import PreTrainedTokenizerBase

DEFAULT_SYSTEM = "You answer questions using the passages given. Answer briefly; say so if the passages do not contain the answer."


def build_rag_prompt(
    tokenizer: PreTrainedTokenizerBase, chunks: list[str], question: str, system: str = DEFAULT_SYSTEM
) -> np.ndarray:
    """Token ids through the model's chat template, ready for generation."""
    if not question.strip():
        raise ValueError("question: must not be empty")
    passages = "\n\n".join(f"Passage {i + 1}:\n{text}" for i, text in enumerate(chunks))
    user = f"{passages}\n\nQuestion: {question}" if chunks else f"Question: {question}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return np.asarray(ids, dtype=np.int64)
