"""The warm-up runs every first-use path once and leaves the serving state as it found it."""

import logging

from server.config import ServerConfig, load_config
from server.warmup import warm_up
from tests.server.conftest import open_runtime


def test_warm_up_times_each_step_and_touches_nothing_served(server_config: ServerConfig, models, caplog) -> None:
    runtime = open_runtime(server_config, models)
    try:
        with caplog.at_level(logging.INFO, logger="server.warmup"):
            result = warm_up(runtime)
        assert min(result.index_s, result.embedder_s, result.blend_s, result.full_prefill_s) > 0
        assert f"warmed up in {result.total_s:.1f} s" in caplog.text
        assert len(runtime.indexed_store.index) == 0
        status = runtime.node.status(0)  # the served node: no entry ever stored in its cache, no chunk counted
        assert (len(runtime.node.engine.cache), status.cache.sequence, status.cache_hits, status.cache_misses) == (0, 0, 0, 0)
    finally:
        runtime.close()


def test_warm_up_is_on_by_default_and_can_be_turned_off() -> None:
    assert ServerConfig().warm_up
    assert not load_config(environ={"TENANTKV_WARM_UP": "false"}).warm_up
