"""Loading SmolLM2 from its GGUF: the converted copy, the fingerprint, and transformers' package probes."""

import time

import transformers

from worker.config import WorkerConfig
from worker.llm import fingerprint_of, load_llm
from worker.packages import default_llm_path


def test_converted_copy_is_cached_and_reloads_fast(models, model_cache_dir) -> None:
    assert (model_cache_dir / models.llm.fingerprint / "config.json").exists()
    started = time.perf_counter()
    again = load_llm(WorkerConfig(cache_dir=model_cache_dir))
    assert time.perf_counter() - started < 10  # the GGUF conversion takes ~20 s; the copy well under 1 s
    assert again.fingerprint == models.llm.fingerprint == fingerprint_of(default_llm_path())
    assert again.model.config.num_hidden_layers == 30 and again.model.config.num_key_value_heads == 3


def test_stop_token_is_the_chat_end(models) -> None:
    assert models.llm.tokenizer.convert_tokens_to_ids("<|im_end|>") in models.llm.stop_token_ids


def test_transformers_never_mistakes_our_kernels_package_for_hugging_faces() -> None:
    """transformers probes for an importable `kernels` and reads the version of the distribution
    shipping it; ours is tenantkv's, which must stay outside the range transformers accepts."""
    assert not transformers.utils.is_kernels_available()
