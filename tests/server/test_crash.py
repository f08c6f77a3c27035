"""SIGKILL during bulk ingestion: every acknowledged batch survives whole, an unacknowledged one is all or nothing.

A real `tenantkv serve` process ingests batches (one Upsert call each, so a batch is acknowledged
when its call returns) and is killed at a random moment, several rounds over one data directory.
After each restart the store and the index must agree with what was acknowledged. At the end a
torn write is appended to the newest KV segment: the server must cut it on open and still serve
every acknowledged chunk's KV.
"""

import random
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from kvcodec import decode
from client.api import Client, DocumentText
from server.process import ServerProcess
from tests.server.conftest import unit_vectors

BATCH = 3  # documents per batch, one chunk each
ROUNDS = 3


class Ingestion(threading.Thread):
    """Upserts numbered batches until the server dies; remembers which calls returned."""

    def __init__(self, address: str, key: str, first_batch: int, vectors: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.address, self.key, self.vectors = address, key, vectors
        self.next_batch = first_batch
        self.acknowledged: list[int] = []
        self.in_flight: int | None = None

    def run(self) -> None:
        with Client(self.address, self.key, timeout_s=60) as client:
            while self.next_batch * BATCH + BATCH <= len(self.vectors):
                self.in_flight = self.next_batch
                try:
                    client.upsert([batch_documents(self.next_batch, self.vectors)])
                except grpc.RpcError:
                    return  # the server died under this call: unacknowledged
                self.acknowledged.append(self.next_batch)
                self.in_flight = None
                self.next_batch += 1


def batch_documents(batch: int, vectors: np.ndarray) -> list[DocumentText]:
    rows = range(batch * BATCH, batch * BATCH + BATCH)
    return [DocumentText(f"doc-{i}", chunks=[f"Passage {i} of the crash test."], vectors=[vectors[i]]) for i in rows]


def present_batches(client: Client, vectors: np.ndarray, batches: range) -> dict[int, int]:
    """How many documents of each batch the index returns for their own vectors."""
    counts = {}
    for batch in batches:
        found = 0
        for i in range(batch * BATCH, batch * BATCH + BATCH):
            hits = client.search(vectors[i], k=1).hits
            found += bool(hits) and hits[0].external_id == f"doc-{i}"
        counts[batch] = found
    return counts


def test_sigkill_during_ingestion_loses_nothing_acknowledged(tmp_path: Path, model_cache_dir: Path, models) -> None:
    rng = random.Random(7)
    vectors = unit_vectors(600, seed=3)
    with ServerProcess(tmp_path / "data", {"cache_dir": model_cache_dir}) as server:
        data_dir, address, admin_key = server.data_dir, server.address, server.admin_key
        acknowledged: list[int] = []
        maybe: set[int] = set()  # batches in flight when the server died
        with Client(address, admin_key) as admin:
            admin.create_tenant("acme")
            key = admin.create_api_key("acme").api_key
        next_batch = 0
        for _ in range(ROUNDS):
            ingestion = Ingestion(address, key, next_batch, vectors)
            ingestion.start()
            time.sleep(rng.uniform(1.0, 4.0))
            server.kill()  # SIGKILL
            ingestion.join(timeout=60)
            acknowledged += ingestion.acknowledged
            if ingestion.in_flight is not None:
                maybe.add(ingestion.in_flight)
            next_batch = ingestion.next_batch + 1
            server.start()
            with Client(address, key) as acme, Client(address, admin_key) as admin:
                counts = present_batches(acme, vectors, range(next_batch))
                assert all(counts[b] == BATCH for b in acknowledged), counts
                assert all(counts[b] in (0, BATCH) for b in maybe), counts
                assert all(counts[b] == 0 for b in range(next_batch) if b not in acknowledged and b not in maybe)
                stored = sum(counts.values())
                assert admin.get_tenant("acme").stats.chunks == stored  # the store agrees with the index
        assert acknowledged and len(maybe) == ROUNDS  # every kill landed during a call

        server.kill()
        newest = sorted((data_dir / "store" / "segments").glob("*.seg"))[-1]
        size = newest.stat().st_size
        with newest.open("ab") as f:
            f.write(b"TKVB" + (5000).to_bytes(4, "little") + b"\0\0\0\0" + b"torn" * 10)
        server.start()
        assert newest.stat().st_size == size  # the torn frame was cut on open
        with Client(address, key) as acme:
            rows = [b * BATCH for b in acknowledged]
            ids = [acme.search(vectors[i], k=1).hits[0].chunk_id for i in rows]
            fetched = acme.fetch_kv(ids)
            assert set(fetched) == set(ids)
            assert all(decode(blob).shape[0] == 30 for _, blob in fetched.values())
