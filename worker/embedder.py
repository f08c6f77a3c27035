"""Sentence embeddings with all-MiniLM-L6-v2: mean pooling over word pieces, then L2 normalisation."""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from worker.packages import default_embedder_path

MAX_WORD_PIECES = 256  # the model's training length; longer text is truncated
BATCH = 64


class Embedder:
    def __init__(self, path: Path) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
        self.dim: int = self._model.config.hidden_size

    @classmethod
    def default(cls) -> "Embedder":
        return cls(default_embedder_path())

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim], unit length, so inner product is cosine similarity."""
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: must be a list of str")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            batch = self._tokenizer(
                texts[start : start + BATCH],
                padding=True,
                truncation=True,
                max_length=MAX_WORD_PIECES,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[start : start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out
