"""Random sequences of ingests with KV, reads, KV attached and dropped, deletes, grants, budget and
sharing-group changes, tenant deletions and restarts, against a real store.

After every step: each tenant's KV charge is within its budget and equals a recount from the
records, reference counts and kvrefs keys agree with the chunks (none negative, none left by a
deleted tenant), every chunk's blob is salted with its owner's name or a group it was in (no blob
reachable outside its salt group), and every KV read gives the bytes computed for that chunk
under the fingerprint it records. The model is plain Python: which tenants exist, their salts.
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from store.config import StoreConfig
from store.errors import NotFound
from store.records import ChunkInput, DocumentInput, TenantSettings
from store.store import Store
from tests.store.invariants import check_kv_records

DIM = 4
TENANTS = ["t0", "t1", "t2", "t3"]
FINGERPRINTS = ["m1", "m2"]
tenants = st.sampled_from(TENANTS)
seeds = st.integers(0, 7)  # few texts, so identical chunks meet within tenants and groups
budgets = st.sampled_from([0, 1, 600, 1500, 4000])
groups = st.sampled_from(["", "g1", "g2"])


def kv_bytes(seed: int, fingerprint: str) -> bytes:
    """The KV "computed" for the chunk of text `seed` under a model: same inputs, same bytes."""
    return np.random.default_rng([seed, FINGERPRINTS.index(fingerprint)]).bytes(200 + 100 * seed)


def chunk(seed: int, fingerprint: str, kv: bool) -> ChunkInput:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return ChunkInput(f"text {seed}", np.arange(seed, seed + 6, dtype=np.int32), vector / np.linalg.norm(vector), kv_bytes(seed, fingerprint) if kv else None)


class KVMachine(RuleBasedStateMachine):
    @initialize(eviction=st.sampled_from(["lru", "lfu"]))
    def open(self, eviction: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tenantkv-kvprop-"))
        self.config = StoreConfig(path=self.tmp / "store", dim=DIM, sync=False, kv_eviction=eviction)
        self.store = Store(self.config)
        self.salts: dict[str, set[str]] = {}
        for tenant in TENANTS:
            self._create(tenant)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _create(self, tenant: str) -> None:
        self.store.create_tenant(tenant)
        self.salts.setdefault(tenant, set()).update({tenant, f"upload:{tenant}"})

    def _chunk_ids(self, tenant: str) -> list[int]:
        return [c.chunk_id for c in self.store.readable_chunks(tenant, range(1, self._next_chunk()), with_tokens=False)]

    def _next_chunk(self) -> int:
        return int(self.store._env.read(lambda txn: txn.get(b"next_chunk", b"1", db=self.store._env.db["meta"])))

    @rule(tenant=tenants, doc=st.integers(0, 3), texts=st.lists(st.tuples(seeds, st.booleans()), min_size=1, max_size=4), fingerprint=st.sampled_from(FINGERPRINTS), uploaded=st.booleans())
    def upsert(self, tenant: str, doc: int, texts: list[tuple[int, bool]], fingerprint: str, uploaded: bool) -> None:
        chunks = [chunk(seed, fingerprint, kv) for seed, kv in texts]
        if uploaded:
            chunks = [ChunkInput(c.text, c.token_ids, c.vector, c.kv_blob, kv_uploaded=True) for c in chunks]
        try:
            self.store.upsert(tenant, [DocumentInput(f"d{doc}", {}, chunks)], fingerprint)
        except NotFound:
            assert tenant not in self.salts or not self._exists(tenant)

    def _exists(self, tenant: str) -> bool:
        return tenant in {t.name for t in self.store.list_tenants()}

    @rule(tenant=tenants, doc=st.integers(0, 3))
    def delete_document(self, tenant: str, doc: int) -> None:
        if self._exists(tenant):
            self.store.delete_documents(tenant, [f"d{doc}"])

    @rule(owner=tenants, grantee=tenants, doc=st.integers(0, 3))
    def grant(self, owner: str, grantee: str, doc: int) -> None:
        if owner != grantee and self._exists(owner) and self._exists(grantee):
            try:
                self.store.grant(owner, [f"d{doc}"], grantee)
            except NotFound:
                pass  # no such document

    @rule(tenant=tenants, picks=st.lists(st.integers(0, 30), max_size=6))
    def read(self, tenant: str, picks: list[int]) -> None:
        if self._exists(tenant):
            ids = self._chunk_ids(tenant)
            for pick in picks:
                if ids:
                    self.store.read_kv(ids[pick % len(ids)])

    @rule(tenant=tenants, picks=st.lists(st.integers(0, 30), min_size=1, max_size=4), fingerprint=st.sampled_from(FINGERPRINTS))
    def attach(self, tenant: str, picks: list[int], fingerprint: str) -> None:
        """A miss's KV, computed for chunks the tenant may read, stored for their owners."""
        if not self._exists(tenant):
            return
        ids = self._chunk_ids(tenant)
        if not ids:
            return
        chosen = {ids[p % len(ids)] for p in picks}
        chunks = {c.chunk_id: c for c in self.store.readable_chunks(tenant, sorted(chosen))}
        attached = self.store.attach_kv(tenant, [(i, kv_bytes(int(c.text.split()[1]), fingerprint)) for i, c in chunks.items()], fingerprint)
        for chunk_id in attached:
            assert self.store.readable_chunks(tenant, [chunk_id])[0].kv_fingerprint == fingerprint

    @rule(tenant=tenants, picks=st.lists(st.integers(0, 30), min_size=1, max_size=3))
    def drop(self, tenant: str, picks: list[int]) -> None:
        if self._exists(tenant) and (ids := self._chunk_ids(tenant)):
            dropped = self.store.drop_kv([ids[p % len(ids)] for p in picks])
            assert all(self.store.read_kv(i) is None for i in dropped)

    @rule(tenant=tenants, budget=budgets, group=groups)
    def update(self, tenant: str, budget: int, group: str) -> None:
        if self._exists(tenant):
            self.store.update_tenant(tenant, TenantSettings(max_kv_bytes=budget, kv_share_group=group))
            if group:
                self.salts[tenant].add(f"group:{group}")

    @rule(tenant=tenants)
    def delete_tenant(self, tenant: str) -> None:
        if self._exists(tenant):
            self.store.delete_tenant(tenant)
            self._create(tenant)  # again, empty: the name's old salts stay in the model (a superset)

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.config)

    @invariant()
    def records_agree(self) -> None:
        check_kv_records(self.store, self.salts)

    @invariant()
    def reads_give_the_chunks_own_kv(self) -> None:
        for tenant in TENANTS:
            for c in self.store.readable_chunks(tenant, self._chunk_ids(tenant)):
                blob = self.store.read_kv(c.chunk_id)
                assert (blob is None) == (not c.has_kv)
                if blob is not None:
                    assert blob == kv_bytes(int(c.text.split()[1]), c.kv_fingerprint)


KVMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_kv_state_machine = KVMachine.TestCase
