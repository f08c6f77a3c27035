"""Loading the generation model: an HF folder, or a GGUF file converted once and cached.

transformers dequantises a GGUF on load (about 20 s for SmolLM2-135M here); the converted
float32 copy in `cache_dir/<fingerprint>/` loads in well under a second on the next start.
"""

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from worker.config import WorkerConfig
from worker.llama import LlamaForward
from worker.packages import default_llm_path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LLM:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str  # names the weights: KV computed by other weights must never be reused
    stop_token_ids: frozenset[int]
    forward: LlamaForward  # our own forward pass over the model's weights


def fingerprint_of(path: Path) -> str:
    """A stable id of a weights file or folder: its name, size and the hash of its first and last MiB."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def load_llm(config: WorkerConfig) -> LLM:
    source = Path(config.llm_path) if config.llm_path else default_llm_path()
    if not source.exists():
        raise FileNotFoundError(f"llm_path: {source} does not exist")
    fingerprint = fingerprint_of(source)
    folder = source if source.is_dir() else _converted_copy(source, Path(config.cache_dir) / fingerprint)
    device = resolve_device(config.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model.eval()
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    return LLM(
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint,
        stop_token_ids=frozenset(t for t in stops if t is not None),
        forward=LlamaForward(model),
    )


def resolve_device(name: str) -> torch.device:
    """"auto" is the GPU where torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but torch sees no GPU")
    return device


def _converted_copy(gguf: Path, folder: Path) -> Path:
    """The GGUF as an HF folder, written once (atomically: a crash leaves no half folder)."""
    if (folder / "config.json").exists():
        return folder
    log.info("converting %s once into %s", gguf.name, folder)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    # The dequantised weights are plain float32; drop the GGUF marker so they save as safetensors.
    del model.config.quantization_config
    model.hf_quantizer = None
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "config.json").exists():
            raise
    return folder
