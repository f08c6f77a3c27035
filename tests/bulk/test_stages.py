"""The bulk job's stages alone, outside Ray."""

from pathlib import Path

import pytest

from bulk.stages import PrecomputeKV
from worker.config import WorkerConfig
from worker.engine import Engine, EngineConfig


def test_a_kv_actor_whose_model_is_not_the_servers_stops_as_it_starts(model_cache_dir: Path, models):
    config = WorkerConfig(cache_dir=model_cache_dir)
    servers = Engine(models.llm, EngineConfig()).kv_fingerprint  # the in-process worker's, as UploadSpec names it
    PrecomputeKV(config, "fp16", server_fingerprint=servers)
    with pytest.raises(ValueError, match="the server's is 0000000000000000"):
        PrecomputeKV(config, "fp16", server_fingerprint="0000000000000000")
