"""The server's Curator index: trained once the store is big enough, rebuilt consistently on restart."""

import concurrent.futures
import dataclasses
import threading

import numpy as np

from server.app import ServerThread
from client.api import Client
from server.indexed_store import MIN_TRAIN_VECTORS
from tests.server.conftest import unit_vectors, vector_documents


def test_index_trains_on_growth_and_survives_restart(server_config, models) -> None:
    config = dataclasses.replace(server_config, precompute_kv=False)  # vectors only: fast to ingest
    vectors = unit_vectors(MIN_TRAIN_VECTORS + 100, seed=40)
    with ServerThread(config, models) as server:
        with Client(server.address, config.admin_key_path.read_text().strip()) as admin:
            admin.create_tenant("big")
            admin.create_tenant("small")
            big_key, small_key = admin.create_api_key("big").api_key, admin.create_api_key("small").api_key
        with Client(server.address, big_key) as big, Client(server.address, small_key) as small:
            docs = vector_documents("v", vectors)
            big.upsert([docs[i : i + 500] for i in range(0, len(docs), 500)])
            small.upsert([vector_documents("s", vectors[:3])])
            runtime = server.server.runtime
            runtime.indexed_store.wait_for_retraining()  # it trains in the background
            assert len(runtime.indexed_store.index.tree.centroids) > 1  # trained: more than the root
            assert big.search(vectors[1234], k=1).hits[0].external_id == "v-1234"
            assert {h.external_id for h in small.search(vectors[0], k=10).hits} == {"s-0", "s-1", "s-2"}
    with ServerThread(config, models) as server:
        with Client(server.address, big_key) as big:
            assert len(server.server.runtime.indexed_store.index) == len(vectors) + 3
            hits = big.search(vectors[77], k=5).hits
            assert hits[0].external_id == "v-77" and all(h.owner_tenant_id == "big" for h in hits)
            found = np.mean([big.search(v, k=1).hits[0].external_id == f"v-{i}" for i, v in list(enumerate(vectors))[::97]])
            assert found >= 0.95


def test_search_waits_in_a_thread_while_a_writer_holds_the_index(server_config, models) -> None:
    """Searches run on the event loop when the index is free; while a commit holds it they wait
    in a thread, so the loop keeps serving other calls, and they answer once it is released."""
    config = dataclasses.replace(server_config, precompute_kv=False)
    vectors = unit_vectors(20, seed=41)
    with ServerThread(config, models) as server:
        with Client(server.address, config.admin_key_path.read_text().strip()) as admin:
            admin.create_tenant("t")
            key = admin.create_api_key("t").api_key
            with Client(server.address, key) as client:
                client.upsert([vector_documents("v", vectors)])
                runtime = server.server.runtime
                assert [h.chunk.external_id for h in runtime.indexed_store.search("t", vectors[3], 1, wait=False)] == ["v-3"]
                held, release = threading.Event(), threading.Event()

                def writer() -> None:
                    with runtime.indexed_store.lock:
                        held.set()
                        release.wait(30)

                thread = threading.Thread(target=writer)
                thread.start()
                held.wait(30)
                assert runtime.indexed_store.search("t", vectors[3], 1, wait=False) is None
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pending = pool.submit(client.search, vectors[5], 1)
                    assert admin.get_tenant("t").tenant_id == "t"  # the loop is not blocked
                    assert not pending.done()
                    release.set()
                    assert pending.result(30).hits[0].external_id == "v-5"
                thread.join()
