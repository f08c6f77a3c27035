"""The generation model's tokenizer alone, for a server that chunks text but runs no model itself."""

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from worker.config import WorkerConfig
from worker.llm import fingerprint_of
from worker.packages import default_llm_path


def load_tokenizer(config: WorkerConfig) -> PreTrainedTokenizerBase:
    """From the HF folder, the GGUF's converted copy once a worker on this machine made it, or the GGUF itself."""
    source = Path(config.llm_path) if config.llm_path else default_llm_path()
    if not source.exists():
        raise FileNotFoundError(f"llm_path: {source} does not exist")
    if source.is_dir():
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    converted = Path(config.cache_dir) / fingerprint_of(source)
    if (converted / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(converted, local_files_only=True)
    return AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
