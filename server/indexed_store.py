"""The store and the tenant index kept in step under one lock: the only way tenant data is written.

The store is the source of truth; the index is derived from it at start and updated after each
commit, so a crash between the two leaves nothing the next start does not rebuild. Every method
blocks (LMDB, numpy), so the gRPC layer calls them off the event loop.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from index.attributes import Attributes
from index.curator import CuratorIndex
from index.filters import Filter
from index.tree import sample_rows
from store.records import Chunk, DocumentInput, Tenant, TenantSettings, UpsertResult
from store.store import Store
from store.vectors import safe_rows, unit_rows

log = logging.getLogger(__name__)

MIN_TRAIN_VECTORS = 2048  # below this every tenant is scanned exactly: no tree needed
TRAIN_SAMPLE = 50_000
RETRAIN_GROWTH = 4


@dataclass(slots=True)  # a hot record, like Chunk
class Hit:
    chunk: Chunk
    score: float


class IndexedStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = CuratorIndex(store.dim)
        self.attributes = Attributes()  # each chunk's metadata values, for filtered search
        self._trained_at = 0  # index size when its tree was last trained
        self.training_failures = 0  # trainings that raised: the index kept its previous tree
        self.zeroed_vectors = 0  # stored vectors found unusable at the last rebuild, indexed as zeros
        # Held across a store write and the index update that follows it, so a rebuild that reads
        # the store never races a commit; searches hold it only for the index lookup.
        self.lock = threading.RLock()
        self._numbers: dict[str, int] = {}
        self._retrainer: threading.Thread | None = None  # the newest background retraining

    # ---- start-up

    def rebuild_index(self) -> None:
        """A fresh index from the store: its tree trained on a sample of the stored vectors.

        Stored vectors are not trusted: each is scaled to unit norm again, or indexed as zeros
        where it cannot be, so no stored data can stop the server from starting.
        """
        with self.lock:
            batches, self.zeroed_vectors = [], 0
            attributes = Attributes()
            for b in tqdm(self.store.iter_index_entries(), desc="index", unit="batch", disable=None):
                vectors, zeroed = safe_rows(b.vectors)  # each batch as read, so the raw copy is not kept
                batches.append((b.ids, vectors, b.readers))
                attributes.add(b.ids, b.metadata)
                self.zeroed_vectors += zeroed
            if self.zeroed_vectors:
                log.warning("index rebuild: %d stored vectors are zero or not finite; indexed as zeros", self.zeroed_vectors)
            total = sum(len(ids) for ids, _, _ in batches)
            index = CuratorIndex(self.store.dim)
            if total >= MIN_TRAIN_VECTORS:
                vectors = np.concatenate([v for _, v, _ in batches])
                self._train_safely(lambda: index.train(vectors[sample_rows(total, TRAIN_SAMPLE)]))
            for ids, vectors, readers in batches:
                _add_entries(index, ids, vectors, readers)
            index.build()
            self.index, self.attributes = index, attributes
            self._trained_at = total
        log.info("index rebuilt from the store: %d chunks, tree of %d nodes", total, len(index.tree.parent))

    def _retrain_if_grown(self) -> None:
        """Retrain the tree each time the index has grown RETRAIN_GROWTH-fold (amortised O(1) a vector),
        in a thread of its own: called under the lock, by a commit.

        The index retrains from the vectors it holds, on a snapshot, taking the lock only to
        snapshot, to hand over the writes made meanwhile and to swap the new tree in, so Search and
        Upsert go on while it trains (a retrain under the lock stopped every tenant's Search for its
        1.3 to 26 s). One at a time.
        """
        size = len(self.index)
        if size < MIN_TRAIN_VECTORS or size < RETRAIN_GROWTH * self._trained_at or self.retraining():
            return
        self._trained_at = size
        index = self.index
        self._retrainer = threading.Thread(target=self._retrain, args=(index, size), name="tenantkv-retrain", daemon=True)
        self._retrainer.start()

    def _retrain(self, index: CuratorIndex, size: int) -> None:
        started = time.perf_counter()
        self._train_safely(lambda: index.retrain(TRAIN_SAMPLE, lock=self.lock))
        seconds = time.perf_counter() - started
        log.info("index retrained at %d chunks in %.2f s: tree of %d nodes", size, seconds, len(index.tree.parent))

    def retraining(self) -> bool:
        return self._retrainer is not None and self._retrainer.is_alive()

    def wait_for_retraining(self) -> None:
        """Until a background retraining has ended (its tree swapped in, or failed)."""
        if self._retrainer is not None:
            self._retrainer.join()

    def _train_safely(self, train: Callable[[], None]) -> None:
        """Run a training; one that fails leaves the index on its previous tree (slower, never down).

        The tree only ever sees rows proven safe for k-means (`ClusterTree.train`), since faiss
        aborts the process from C++ on overflowing values; a Python error is caught here.
        """
        try:
            train()
        except (ValueError, RuntimeError) as exc:
            self.training_failures += 1
            log.error("index training failed (%s); the index keeps its previous tree", exc)

    # ---- tenants

    def tenant_number(self, name: str) -> int:
        number = self._numbers.get(name)
        if number is None:
            number = self._numbers[name] = self.store.get_tenant(name).number
        return number

    def create_tenant(self, name: str, settings: TenantSettings) -> Tenant:
        return self.store.create_tenant(name, settings)

    def update_tenant(self, name: str, settings: TenantSettings) -> Tenant:
        return self.store.update_tenant(name, settings)

    def delete_tenant(self, name: str) -> int:
        """Remove the tenant's chunks and its grants from the store and the index; the chunks removed."""
        number = self.tenant_number(name)
        with self.lock:
            deletion = self.store.delete_tenant(name)
            self._numbers.pop(name, None)
            self.index.remove(deletion.removed_chunk_ids)
            self.attributes.remove(deletion.removed_chunk_ids)
            for chunk_id, _ in deletion.revoked:
                self.index.revoke(np.array([chunk_id], dtype=np.int64), number)
        return len(deletion.removed_chunk_ids)

    def grant(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        return self._change_grants(owner, external_ids, grantee, grant=True)

    def revoke(self, owner: str, external_ids: list[str], grantee: str) -> np.ndarray:
        return self._change_grants(owner, external_ids, grantee, grant=False)

    def _change_grants(self, owner: str, external_ids: list[str], grantee: str, grant: bool) -> np.ndarray:
        """Grant or revoke in the store, then mirror the chunks it changed in the index."""
        grantee_number = self.tenant_number(grantee)
        with self.lock:
            ids = (self.store.grant if grant else self.store.revoke)(owner, external_ids, grantee)
            (self.index.grant if grant else self.index.revoke)(ids, grantee_number)
        return ids

    # ---- documents

    def commit(self, tenant: str, documents: list[DocumentInput], kv_fingerprint: str) -> UpsertResult:
        """Write one batch durably in one transaction, then bring the index up to date."""
        owner = self.tenant_number(tenant)
        with self.lock:
            result = self.store.upsert(tenant, documents, kv_fingerprint=kv_fingerprint)
            if len(result.removed):
                self.index.remove(result.removed)
                self.attributes.remove(result.removed)
            _add_entries(self.index, result.added, result.vectors, result.readers, owner=owner)
            self.attributes.add(result.added, [doc.metadata for doc in documents for _ in doc.chunks])
            self._retrain_if_grown()
        return result

    def attach_kv(self, tenant: str, blobs: list[tuple[int, bytes]], kv_fingerprint: str) -> list[int]:
        """Give chunks `tenant` reads the KV blobs a worker computed on a miss (charged to their
        owners' budgets); the ids of those that got it. The index holds no KV: only the store changes."""
        return self.store.attach_kv(tenant, blobs, kv_fingerprint)

    def drop_kv(self, chunk_ids: list[int]) -> list[int]:
        """Take the chunks' KV blobs away (computed under another model); the ids that had one."""
        return self.store.drop_kv(chunk_ids)

    def delete_documents(self, tenant: str, external_ids: list[str]) -> int:
        with self.lock:
            removed = self.store.delete_documents(tenant, external_ids)
            self.index.remove(removed)
            self.attributes.remove(removed)
        return len(removed)

    # ---- retrieval

    def search(
        self, tenant: str, query: np.ndarray, k: int, wait: bool = True, with_tokens: bool = True, where: Filter | None = None
    ) -> list[Hit] | None:
        """Top-k chunks `tenant` may read (and, with `where`, whose metadata satisfies it); the store
        re-checks every hit the index returns. Their token ids are read only `with_tokens`
        (generation needs them, a Search reply does not).

        With `wait=False`, None at once if a writer holds the index. A search takes well under a
        millisecond, so the server runs it on the event loop, which skips two thread hand-offs and
        the GIL contention of a thread pool that under load cost more than the search; a commit
        holds the index across its fsync, and then the server waits in a thread instead.
        """
        number = self.tenant_number(tenant)
        query = unit_rows(query[None, :], ["query_vector"])
        if not self.lock.acquire(blocking=wait):
            return None
        try:
            matches = None if where is None else self.attributes.compile(where)  # under the lock: the entries as they are now
            scores, ids = self.index.search(query, number, k, where=matches)
        finally:
            self.lock.release()
        found = ids[0] >= 0
        cosines = np.clip(scores[0][found], -1.0, 1.0)  # unit vectors; float32 rounding may step past 1
        score_of = dict(zip(ids[0][found].tolist(), cosines.tolist()))
        chunks = self.store.readable_chunks(tenant, list(score_of), with_tokens)
        return [Hit(chunk=c, score=score_of[c.chunk_id]) for c in chunks]


def _add_entries(index, ids: np.ndarray, vectors: np.ndarray, readers: list[list[int]], owner: int | None = None) -> None:
    """Add chunks to the index under their first reader (or `owner`) and grant the rest."""
    if len(ids) == 0:
        return
    firsts = np.array([owner if owner is not None else r[0] for r in readers], dtype=np.int64)
    for tenant in np.unique(firsts):
        mine = firsts == tenant
        index.add(ids[mine], vectors[mine], int(tenant))
    granted: dict[int, list[int]] = {}
    for chunk_id, first, tenants in zip(ids.tolist(), firsts.tolist(), readers):
        for tenant in tenants:
            if tenant != first:
                granted.setdefault(tenant, []).append(chunk_id)
    for tenant, chunk_ids in granted.items():
        index.grant(np.array(chunk_ids, dtype=np.int64), tenant)
