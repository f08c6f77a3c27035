"""Chunks stay within the token budget, keep sentences whole where they fit, and lose no text."""

import pytest

from worker.chunker import chunk_text


def test_sentences_pack_up_to_the_budget(models) -> None:
    text = " ".join(f"Sentence {i} talks about the orbit of planet number {i}." for i in range(80))
    chunks = chunk_text(text, models.llm.tokenizer, 64)
    assert len(chunks) > 5
    assert all(len(c.token_ids) <= 64 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)
    assert " ".join(c.text for c in chunks) == text
    assert all(c.token_ids.tolist() == models.llm.tokenizer.encode(c.text, add_special_tokens=False) for c in chunks)


def test_a_sentence_longer_than_the_budget_is_split(models) -> None:
    chunks = chunk_text("word " * 500 + "end.", models.llm.tokenizer, 100)
    assert len(chunks) >= 5 and all(len(c.token_ids) <= 100 for c in chunks)


def test_short_text_is_one_chunk(models) -> None:
    assert [c.text for c in chunk_text("  Just one.  ", models.llm.tokenizer)] == ["Just one."]


def test_bad_arguments(models) -> None:
    with pytest.raises(ValueError, match="text"):
        chunk_text(" \n ", models.llm.tokenizer)
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("x.", models.llm.tokenizer, 0)
