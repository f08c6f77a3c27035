"""A tenant that floods the shared tree with adversarial vectors does not cost another tenant recall.

The attacker adds ten times the victim's data, shaped to pull the shared tree's centroids: huge
before normalisation, many copies of few vectors, all in one cluster. The retrain that follows
must leave the victim's recall@10 within 0.02 of what it was.
"""

import dataclasses

import numpy as np
import pytest

from server.indexed_store import MIN_TRAIN_VECTORS
from server.runtime import Runtime
from store.records import ChunkInput, DocumentInput, TenantSettings
from tests.server.conftest import open_runtime

DIM = 384
VICTIM = 2_500
QUERIES = 200
K = 10


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 200 unit centres with noise of norm ~1.5: spread enough that recall@10
    at the index's default effort is about 0.8, so a worse tree shows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((200, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(0, 200, n)] + 1.5 * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def documents(prefix: str, vectors: np.ndarray, first: int) -> list[DocumentInput]:
    """One single-chunk document per vector, ids `<prefix>-<first + i>`."""
    tokens = np.arange(4, dtype=np.int32)
    return [DocumentInput(f"{prefix}-{first + i}", {}, [ChunkInput(f"{prefix} {first + i}", tokens, v)]) for i, v in enumerate(vectors)]


def adversarial(n: int, seed: int) -> np.ndarray:
    """Scaled by 1e30, 50 distinct vectors copied over and over, all near one point."""
    rng = np.random.default_rng(seed)
    center = rng.standard_normal(DIM)
    distinct = center + 0.05 * rng.standard_normal((50, DIM))
    return (np.repeat(distinct, n // 50, axis=0) * 1e30).astype(np.float32)


def recall(runtime: Runtime, queries: np.ndarray, vectors: np.ndarray) -> float:
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    found = 0
    for query, truth in zip(queries, exact):
        hits = runtime.indexed_store.search("victim", query, K)
        found += len({int(h.chunk.external_id.split("-")[1]) for h in hits} & set(truth.tolist()))
    return found / (len(queries) * K)


@pytest.fixture
def runtime(server_config, models):
    opened = open_runtime(dataclasses.replace(server_config, precompute_kv=False), models)
    yield opened
    opened.close()


def test_a_flood_of_adversarial_vectors_keeps_the_victims_recall(runtime: Runtime) -> None:
    for tenant in ("victim", "attacker"):
        runtime.create_tenant(tenant, TenantSettings())
    drawn = clustered(VICTIM + QUERIES, seed=1)
    victim, queries = drawn[:VICTIM], drawn[VICTIM:]
    for start in range(0, VICTIM, 500):
        runtime.commit("victim", documents("v", victim[start : start + 500], start))
    runtime.indexed_store.wait_for_retraining()  # it trains in the background
    assert runtime.indexed_store.index.trained_on >= MIN_TRAIN_VECTORS
    before = recall(runtime, queries, victim)
    trained_before = runtime.indexed_store.index.trained_on

    flood = adversarial(10 * VICTIM, seed=2)
    for start in range(0, len(flood), 2_500):
        runtime.commit("attacker", documents("a", flood[start : start + 2_500], start))
    runtime.indexed_store.wait_for_retraining()
    assert runtime.indexed_store.index.trained_on != trained_before and runtime.indexed_store.training_failures == 0  # the flood forced a retrain

    after = recall(runtime, queries, victim)
    assert after >= before - 0.02, (before, after)
