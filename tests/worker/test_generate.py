"""The RAG prompt and streamed greedy generation with the real SmolLM2."""

import numpy as np
import pytest

from worker.generate import generate_stream
from worker.prompt import PromptLayout


def prompt(models, passages: list[str], question: str) -> np.ndarray:
    tokenizer = models.llm.tokenizer
    chunks = [np.asarray(tokenizer.encode(p, add_special_tokens=False)) for p in passages]
    return PromptLayout.build(tokenizer).full(tokenizer, chunks, question)


def test_prompt_uses_the_chat_template(models) -> None:
    ids = prompt(models, ["Paris is in France.", "Rome is in Italy."], "Where is Rome?")
    text = models.llm.tokenizer.decode(ids)
    assert text.count("<|im_start|>") == 3 and text.rstrip().endswith("<|im_start|>assistant")
    assert text.index("Paris") < text.index("Rome is in Italy") < text.index("Where is Rome?")


def test_generation_streams_greedy_tokens_and_answers(models) -> None:
    ids = prompt(models, ["The Eiffel Tower is in Paris."], "In which city is the Eiffel Tower?")
    tokens = list(generate_stream(models.llm, ids, 24))
    assert 1 <= len(tokens) <= 24
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(tokens, tokens[1:]))
    text = "".join(t.text for t in tokens)
    assert text == models.llm.tokenizer.decode([t.token_id for t in tokens], skip_special_tokens=True)
    assert "paris" in text.lower()
    assert [t.token_id for t in generate_stream(models.llm, ids, 24)] == [t.token_id for t in tokens]  # greedy


def test_multibyte_characters_are_never_split(models) -> None:
    ids = prompt(models, [], "Write the word café and an emoji 🙂 three times.")
    tokens = list(generate_stream(models.llm, ids, 40))
    assert all("\ufffd" not in t.text for t in tokens)


def test_bad_arguments(models) -> None:
    vocab = models.llm.model.config.vocab_size
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_stream(models.llm, np.array([1, 2]), 0)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate_stream(models.llm, np.array([1, vocab]), 4)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate_stream(models.llm, np.array([], dtype=np.int64), 4)
    with pytest.raises(ValueError, match="question"):
        prompt(models, ["x"], "  ")
