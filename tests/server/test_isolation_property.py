"""Random sequences of upserts, deletes, grants, revokes, tenant deletions and restarts, through gRPC.

After every step: no Search returns a chunk the caller may not read, every readable chunk is
found (the index is exact), KVCache.Fetch serves readable chunks' KV, other tenants' chunks are
NOT_FOUND for it, and the admin API counts each tenant's own and granted chunks. Rules also ask
RetrieveAndGenerate questions with a random k (the chunks it uses must be the exact top k of what
the caller may read, whatever the number of readable chunks) and rotate keys (a revoked key is
refused at once).
The model of what each tenant may read is plain Python sets. The machine runs once with the
in-process worker and once with two worker services the router sends the questions to.
"""

import shutil
import tempfile
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from server.app import ServerThread
from client.api import Client, DocumentText
from server.config import ServerConfig
from server.process import free_ports
from tests.server.conftest import unit_vectors
from tests.workers import WorkerThread, wait_all_up
from worker.serve import WorkerServiceConfig

TENANTS = ["t0", "t1", "t2"]
DOC_IDS = [f"d{i}" for i in range(6)]
tenants = st.sampled_from(TENANTS)
doc_ids = st.sampled_from(DOC_IDS)
QUESTION = "Which passage is this?"


class IsolationMachine(RuleBasedStateMachine):
    models = None  # set by the test: the session's loaded models
    cache_dir: Path | None = None
    workers = 0  # worker services; 0: the server's in-process worker

    @initialize()
    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tenantkv-prop-"))
        server_port, *ports = free_ports(1 + self.workers)
        self.config = ServerConfig(
            data_dir=self.tmp / "data", port=server_port, cache_dir=self.cache_dir, warm_up=False,
            workers=",".join(f"127.0.0.1:{port}" for port in ports),
        )
        self.server = ServerThread(self.config, self.models).start()
        self.worker_threads = []
        if ports:
            with self._admin() as admin:
                key = admin.create_api_key(worker=True).api_key
            for port in ports:
                config = WorkerServiceConfig(listen=f"127.0.0.1:{port}", store=self.server.address, api_key=key)
                self.worker_threads.append(WorkerThread(config, self.models).start())
            wait_all_up(self.server)
        self.question_vector = self.models.embedder.embed([QUESTION])[0]  # as the server embeds it
        self.keys: dict[str, str] = {}
        self.docs: dict[tuple[str, str], int] = {}  # (owner, doc) -> vector seed
        self.grants: set[tuple[str, str, str]] = set()  # (owner, doc, grantee)
        self.alive: set[str] = set()
        self.seed = 0
        with self._admin() as admin:
            for tenant in TENANTS:
                admin.create_tenant(tenant)
                self.keys[tenant] = admin.create_api_key(tenant).api_key
                self.alive.add(tenant)

    def teardown(self) -> None:
        for worker in self.worker_threads:
            worker.stop()
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _admin(self) -> Client:
        return Client(self.server.address, self.config.admin_key_path.read_text().strip())

    def _client(self, tenant: str) -> Client:
        return Client(self.server.address, self.keys[tenant])

    @rule(tenant=tenants, doc=doc_ids)
    def upsert(self, tenant: str, doc: str) -> None:
        if tenant not in self.alive:
            return
        self.seed += 1
        vector = unit_vectors(1, seed=self.seed)[0]
        with self._client(tenant) as client:
            client.upsert([[DocumentText(doc, chunks=[f"{tenant} {doc}"], vectors=[vector])]])
        self.docs[(tenant, doc)] = self.seed

    @rule(tenant=tenants, doc=doc_ids)
    def delete(self, tenant: str, doc: str) -> None:
        if tenant not in self.alive:
            return
        with self._client(tenant) as client:
            client.delete([doc])
        self.docs.pop((tenant, doc), None)
        self.grants = {g for g in self.grants if g[:2] != (tenant, doc)}

    @rule(owner=tenants, doc=doc_ids, grantee=tenants)
    def grant(self, owner: str, doc: str, grantee: str) -> None:
        if (owner, doc) not in self.docs or grantee not in self.alive or grantee == owner:
            return
        with self._admin() as admin:
            admin.grant(owner, [doc], grantee)
        self.grants.add((owner, doc, grantee))

    @rule(owner=tenants, doc=doc_ids, grantee=tenants)
    def revoke(self, owner: str, doc: str, grantee: str) -> None:
        if (owner, doc) not in self.docs or grantee not in self.alive or grantee == owner:
            return
        with self._admin() as admin:
            admin.revoke(owner, [doc], grantee)
        self.grants.discard((owner, doc, grantee))

    @precondition(lambda self: len(self.alive) > 1)
    @rule(tenant=tenants)
    def delete_tenant(self, tenant: str) -> None:
        if tenant not in self.alive:
            return
        with self._admin() as admin:
            admin.delete_tenant(tenant)
        self.alive.discard(tenant)
        self.docs = {k: v for k, v in self.docs.items() if k[0] != tenant}
        self.grants = {g for g in self.grants if tenant not in (g[0], g[2])}

    @rule(tenant=tenants, k=st.integers(1, ServerConfig().rag_max_k))
    def ask(self, tenant: str, k: int) -> None:
        """The chunks used are the exact top k of what the tenant may read, by inner product with the
        question's embedding, computed here from the model's vectors; all of them when fewer exist."""
        if tenant not in self.alive:
            return
        with self._client(tenant) as client:
            events = list(client.ask(QUESTION, k=k, max_new_tokens=1))
        used = [(h.owner_tenant_id, h.external_id) for h in events[0].chunks.hits]
        readable = self.readable(tenant)
        assert len(used) == len(set(used)) == min(k, len(readable)) and set(used) <= readable, (tenant, k, used)
        scores = {key: float(self.question_vector @ unit_vectors(1, seed=self.docs[key])[0]) for key in readable}
        for hit in events[0].chunks.hits:
            assert hit.score == pytest.approx(scores[(hit.owner_tenant_id, hit.external_id)], abs=1e-5)
        assert [h.score for h in events[0].chunks.hits] == sorted((h.score for h in events[0].chunks.hits), reverse=True)
        passed_over = [scores[key] for key in readable - set(used)]
        assert not passed_over or min(scores[key] for key in used) >= max(passed_over) - 1e-5, (tenant, k, used)
        assert events[-1].WhichOneof("event") == "stats"

    @rule(tenant=tenants)
    def rotate_key(self, tenant: str) -> None:
        if tenant not in self.alive:
            return
        old = self.keys[tenant]
        with self._admin() as admin:
            key_id = old[4:20]
            admin.revoke_api_key(key_id)
            self.keys[tenant] = admin.create_api_key(tenant).api_key
        with Client(self.server.address, old) as stale, pytest.raises(grpc.RpcError) as err:
            stale.search(unit_vectors(1, seed=1)[0], k=1)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    @rule()
    def restart(self) -> None:
        """The server only: workers keep running and are admitted again by the new router."""
        self.server.stop()
        self.server = ServerThread(self.config, self.models).start()
        if self.worker_threads:
            wait_all_up(self.server)

    def readable(self, tenant: str) -> set[tuple[str, str]]:
        own = {k for k in self.docs if k[0] == tenant}
        return own | {(o, d) for o, d, g in self.grants if g == tenant}

    @invariant()
    def each_tenant_reads_exactly_what_it_may(self) -> None:
        if not hasattr(self, "server"):
            return
        probe = unit_vectors(1, seed=10_000)[0]
        own_chunks: dict[str, dict[int, str]] = {}
        for tenant in sorted(self.alive):
            with self._client(tenant) as client:
                hits = client.search(probe, k=50).hits
            found = {(h.owner_tenant_id, h.external_id) for h in hits}
            assert found == self.readable(tenant), (tenant, found, self.readable(tenant))
            own_chunks[tenant] = {h.chunk_id: h.external_id for h in hits if h.owner_tenant_id == tenant}
        with self._admin() as admin:
            for tenant in sorted(self.alive):
                stats = admin.get_tenant(tenant).stats
                assert stats.chunks == sum(1 for owner, _ in self.docs if owner == tenant)
                assert stats.granted_chunks == sum(1 for *_, grantee in self.grants if grantee == tenant)
        for tenant in sorted(self.alive):
            with self._client(tenant) as client:
                for other in sorted(self.alive - {tenant}):
                    for chunk_id, doc in own_chunks[other].items():
                        if (other, doc) in self.readable(tenant):
                            assert set(client.fetch_kv([chunk_id])) == {chunk_id}
                            continue
                        with pytest.raises(grpc.RpcError) as err:
                            client.fetch_kv([chunk_id])
                        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def use_models(models, model_cache_dir) -> None:
    IsolationMachine.models = models
    IsolationMachine.cache_dir = model_cache_dir


def test_tenant_isolation_state_machine(models, model_cache_dir) -> None:
    use_models(models, model_cache_dir)
    run_state_machine_as_test(
        IsolationMachine,
        settings=settings(max_examples=25, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck)),
    )


class IsolationWithWorkers(IsolationMachine):
    workers = 2


def test_tenant_isolation_state_machine_with_two_workers(models, model_cache_dir) -> None:
    use_models(models, model_cache_dir)
    run_state_machine_as_test(
        IsolationWithWorkers,
        settings=settings(max_examples=10, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck)),
    )


def test_ask_takes_the_top_k_of_more_chunks_than_k(models, model_cache_dir) -> None:
    """The machine's steps seldom make more chunks readable than k: here one tenant reads all 18,
    more than the largest k a question may ask for, and asks for a few of them and for the most."""
    use_models(models, model_cache_dir)
    machine = IsolationMachine()
    machine.start()
    try:
        for tenant in TENANTS:
            for doc in DOC_IDS:
                machine.upsert(tenant, doc)
        for owner in TENANTS[1:]:
            for doc in DOC_IDS:
                machine.grant(owner, doc, TENANTS[0])
        assert len(machine.readable(TENANTS[0])) > ServerConfig().rag_max_k
        for k in (1, 3, ServerConfig().rag_max_k):
            machine.ask(TENANTS[0], k)
        machine.each_tenant_reads_exactly_what_it_may()
    finally:
        machine.teardown()
