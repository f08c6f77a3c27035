"""Configuration: defaults, then the TOML file, then TENANTKV_* variables."""

from pathlib import Path

import pytest

from server.config import ServerConfig, load_config
from store.errors import InvalidArgument


def test_toml_then_environment(tmp_path: Path) -> None:
    toml = tmp_path / "tenantkv.toml"
    toml.write_text('data_dir = "/srv/tkv"\nport = 6000\nllm_path = "/models/x.gguf"\nupload_recompute_fraction = 0.5\n')
    config = load_config(toml, {"TENANTKV_PORT": "7000", "TENANTKV_HOST": "0.0.0.0", "OTHER": "x"})
    assert config.upload_recompute_fraction == 0.5
    assert load_config(None, {"TENANTKV_UPLOAD_RECOMPUTE_FRACTION": "0"}).upload_recompute_fraction == 0.0
    assert config.data_dir == Path("/srv/tkv")
    assert (config.host, config.port) == ("0.0.0.0", 7000)
    assert config.llm_path == Path("/models/x.gguf")
    assert config.embedder_path is None
    assert config.admin_key_path == Path("/srv/tkv/admin.key")


def test_defaults_bind_loopback() -> None:
    config = load_config(None, {})
    assert config == ServerConfig()
    assert config.host == "127.0.0.1"


def test_unknown_or_malformed_keys_are_rejected(tmp_path: Path) -> None:
    toml = tmp_path / "tenantkv.toml"
    toml.write_text("prot = 1\n")
    with pytest.raises(InvalidArgument, match="prot"):
        load_config(toml, {})
    with pytest.raises(InvalidArgument, match="port"):
        load_config(None, {"TENANTKV_PORT": "eighty"})
    for fraction in ("1.5", "nan", "some"):
        with pytest.raises(InvalidArgument, match="upload_recompute_fraction"):
            load_config(None, {"TENANTKV_UPLOAD_RECOMPUTE_FRACTION": fraction})


def test_scheduler_settings_reach_the_engine() -> None:
    config = load_config(None, {"TENANTKV_CUDA_GRAPHS": "false", "TENANTKV_MAX_BATCH_SIZE": "4"})
    scheduler = config.engine_config().scheduler
    assert (scheduler.cuda_graphs, scheduler.max_batch_size) == (False, 4)
    assert ServerConfig().engine_config().scheduler.cuda_graphs
