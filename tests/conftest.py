"""Session-wide fixtures: the real models, loaded once, and real servers on free loopback ports."""

import os
from pathlib import Path

import pytest
import torch

# Triton kernels run in its interpreter on machines without a GPU. Set before anything (transformers
# included) imports triton: its language functions are patched for the interpreter on import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from server.app import ServerThread
from client.api import Client
from server.config import ServerConfig
from server.runtime import Models, load_models
from worker.config import WorkerConfig


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory) -> Path:
    """Where the GGUF's converted copy goes; TENANTKV_TEST_CACHE keeps it between runs."""
    configured = os.environ.get("TENANTKV_TEST_CACHE")
    return Path(configured) if configured else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def models(model_cache_dir: Path) -> Models:
    """The real models in float32 on the CPU, on a machine with a GPU too: the suite's equalities
    (batched against alone within 1e-4, our forward against transformers') are float32 ones; the
    GPU tests build their own models on the GPU."""
    return load_models(WorkerConfig(cache_dir=model_cache_dir, device="cpu"))


@pytest.fixture
def server_config(tmp_path: Path, model_cache_dir: Path) -> ServerConfig:
    return ServerConfig(data_dir=tmp_path / "data", port=0, cache_dir=model_cache_dir, warm_up=False)


@pytest.fixture
def server(server_config: ServerConfig, models: Models):
    with ServerThread(server_config, models) as running:
        yield running


@pytest.fixture
def admin(server: ServerThread, server_config: ServerConfig):
    with Client(server.address, server_config.admin_key_path.read_text().strip()) as client:
        yield client
