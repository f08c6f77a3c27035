"""all-MiniLM-L6-v2 embeddings: unit length, meaningful neighbours, batching does not change results."""

import numpy as np
import pytest


def test_embeddings_are_unit_and_semantic(models) -> None:
    vectors = models.embedder.embed(["a small cat", "a little kitten", "the bond market fell"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6 > 0.3 > similarity[0, 2]


def test_batches_and_padding_do_not_change_embeddings(models) -> None:
    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(70)]
    together = models.embedder.embed(texts)
    alone = np.stack([models.embedder.embed([t])[0] for t in texts[60:]])
    np.testing.assert_allclose(together[60:], alone, atol=1e-5)


def test_rejects_non_text(models) -> None:
    with pytest.raises(TypeError, match="texts"):
        models.embedder.embed("not a list")
    assert models.embedder.embed([]).shape == (0, 384)
