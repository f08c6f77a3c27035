"""One tenant's vectors cannot take the service down or win another's rankings (issue: hostile tenant).

The attack that aborted the server and every start after it: finite but huge vectors, stored
unnormalised, reached faiss k-means at the next retrain of the shared tree.
"""

import dataclasses

import numpy as np
import pytest

from server.app import ServerThread
from client.api import Client
from server.indexed_store import MIN_TRAIN_VECTORS
from store.env import U64
from tests.server.conftest import DIM, unit_vectors, vector_documents


@pytest.fixture
def vector_only_config(server_config):
    """Vectors given by the client and no KV precompute: thousands of chunks ingest in seconds."""
    return dataclasses.replace(server_config, precompute_kv=False)


def poisoned(n: int, seed: int) -> np.ndarray:
    return np.sign(np.random.default_rng(seed).standard_normal((n, DIM))).astype(np.float32) * np.float32(3e38)


def good_and_evil(server: ServerThread, config) -> tuple[str, str]:
    """Create tenants `good` and `evil`; returns their keys."""
    with Client(server.address, config.admin_key_path.read_text().strip()) as admin:
        admin.create_tenant("good")
        admin.create_tenant("evil")
        return admin.create_api_key("good").api_key, admin.create_api_key("evil").api_key


def check_serving(address: str, good_key: str, evil_key: str, good_vectors: np.ndarray) -> None:
    with Client(address, good_key) as good, Client(address, evil_key) as evil:
        for i in (0, 1234, 2999):
            hits = good.search(good_vectors[i], k=5).hits
            assert hits[0].external_id == f"good-{i}" and hits[0].score == pytest.approx(1.0, abs=1e-5)
            assert all(-1.0 <= h.score <= 1.0 and h.external_id.startswith("good-") for h in hits)
        scores = [h.score for h in evil.search(poisoned(1, seed=99)[0], k=10).hits]
        assert len(scores) == 10 and all(-1.0 <= s <= 1.0 for s in scores)


def test_poisoned_vectors_are_normalised_and_survive_retrain_and_restart(vector_only_config, models) -> None:
    good_vectors = unit_vectors(3000, seed=1)
    with ServerThread(vector_only_config, models) as server:
        good_key, evil_key = good_and_evil(server, vector_only_config)
        with Client(server.address, good_key) as good, Client(server.address, evil_key) as evil:
            good.upsert([vector_documents("good", good_vectors[:1000])])
            evil.upsert([vector_documents("evil", poisoned(10, seed=2))])
            good.upsert(vector_documents("good", good_vectors)[1000 * b : 1000 * (b + 1)] for b in (1, 2))
        runtime = server.server.runtime
        runtime.indexed_store.wait_for_retraining()  # it trains in the background
        assert runtime.indexed_store.index.trained_on >= MIN_TRAIN_VECTORS and runtime.indexed_store.training_failures == 0  # a retrain ran
        check_serving(server.address, good_key, evil_key, good_vectors)
    with ServerThread(vector_only_config, models) as server:
        assert server.server.runtime.indexed_store.index.trained_on >= MIN_TRAIN_VECTORS
        check_serving(server.address, good_key, evil_key, good_vectors)


def test_a_store_holding_hostile_vectors_still_starts_and_serves(vector_only_config, models) -> None:
    """Vectors that no path lets in any more, written straight into LMDB (an older version, a bug):
    the start-up trains and indexes around them, and the server serves."""
    good_vectors = unit_vectors(3000, seed=3)
    with ServerThread(vector_only_config, models) as server:
        good_key, evil_key = good_and_evil(server, vector_only_config)
        with Client(server.address, good_key) as good, Client(server.address, evil_key) as evil:
            good.upsert(vector_documents("good", good_vectors)[1000 * b : 1000 * (b + 1)] for b in range(3))
            evil.upsert([vector_documents("evil", unit_vectors(40, seed=4))])
        store = server.server.runtime.store
        hostile = np.concatenate([poisoned(10, seed=5), np.full((10, DIM), np.nan), np.full((10, DIM), np.inf), np.zeros((10, DIM))])
        with store._env.lmdb.begin(write=True) as txn:
            for chunk_id, row in zip(range(3001, 3041), hostile.astype(np.float32)):
                txn.put(U64.pack(chunk_id), row.tobytes(), db=store._env.db["vectors"])
    with ServerThread(vector_only_config, models) as server:
        runtime = server.server.runtime
        assert runtime.indexed_store.zeroed_vectors == 30 and runtime.indexed_store.training_failures == 0
        assert runtime.indexed_store.index.trained_on >= MIN_TRAIN_VECTORS
        check_serving(server.address, good_key, evil_key, good_vectors)
