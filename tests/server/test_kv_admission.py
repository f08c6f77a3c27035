"""The admission counter: per-tenant retrieval counts that never under-count, forgotten after the window; the policies' keep rule; the server's default policy."""

import dataclasses

import numpy as np
import pytest

from server.config import ServerConfig, load_config
from server.kv_admission import AdmissionCounter, SketchShape
from server.kv_policy import keeps
from store.errors import InvalidArgument


def test_counts_never_fall_below_the_true_counts_even_with_collisions() -> None:
    counter = AdmissionCounter(SketchShape(width=64, depth=3))  # far fewer counters than chunks: collisions
    rng = np.random.default_rng(1)
    draws = rng.zipf(1.1, 3000) % 500
    truth: dict[int, int] = {}
    for chunk_id in draws.tolist():
        truth[chunk_id] = truth.get(chunk_id, 0) + 1
        assert counter.record("acme", [chunk_id])[0] >= truth[chunk_id]


def test_exact_while_the_chunks_are_few() -> None:
    counter = AdmissionCounter()
    assert counter.record("acme", [7, 8, 7]) == [1, 1, 2]
    assert counter.record("acme", [7]) == [3]


def test_tenants_count_apart_and_a_forgotten_tenant_starts_over() -> None:
    counter = AdmissionCounter()
    counter.record("acme", [5, 5])
    assert counter.record("globex", [5]) == [1]
    counter.forget("acme")
    assert counter.record("acme", [5]) == [1]


def test_a_retrieval_counts_for_half_a_window_to_a_window() -> None:
    now = [0.0]
    counter = AdmissionCounter(SketchShape(window_s=100), clock=lambda: now[0])
    counter.record("acme", [1])
    now[0] = 60  # into the second half-window: still counted
    assert counter.record("acme", [1]) == [2]
    now[0] = 110  # the first retrieval's half-window has gone; the second's is the previous one
    assert counter.record("acme", [1]) == [2]
    now[0] = 400  # idle for longer than the window: everything forgotten
    assert counter.record("acme", [1]) == [1]


def test_sketch_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="window_s"):
        SketchShape(window_s=0)
    with pytest.raises(ValueError, match="width"):
        SketchShape(width=0)


@pytest.mark.parametrize(
    "policy, retrievals, kept",
    [("eager", 1, True), ("lazy", 1, True), ("none", 9, False), ("admit_on_reuse", 1, False), ("admit_on_reuse", 2, True)],
)
def test_which_misses_are_kept(policy: str, retrievals: int, kept: bool) -> None:
    assert keeps(policy, retrievals, admit_after=2) is kept


def test_default_policy_comes_from_precompute_kv_unless_named() -> None:
    assert ServerConfig().default_kv_policy == "eager"
    assert ServerConfig(precompute_kv=False).default_kv_policy == "none"
    assert load_config(environ={"TENANTKV_KV_POLICY": "lazy", "TENANTKV_PRECOMPUTE_KV": "false"}).default_kv_policy == "lazy"
    with pytest.raises(InvalidArgument, match="kv_policy"):
        _ = dataclasses.replace(ServerConfig(), kv_policy="sometimes").default_kv_policy
