"""KV policies through a real server and model: when a miss's KV is stored (lazy, admit_on_reuse,
eager after losing it, none never), stale KV of another model, the answer the same whatever the
policy, and computed KV coming back over a remote worker's stream."""

import functools
import itertools
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from client.api import Client, DocumentText
from protos.tenantkv.v1 import tenant_admin_pb2
from server.app import ServerThread
from server.config import ServerConfig
from server.kv_policy import MissCause, keeps
from server.process import free_port
from server.runtime import Runtime
from tests.server.test_metrics import scrape
from tests.workers import WorkerThread, wait_all_up
from worker.serve import WorkerServiceConfig

PASSAGES = [
    "The Seine flows through Paris and reaches the English Channel at Le Havre.",
    "Mount Etna in Sicily is one of the most active volcanoes in Europe.",
]
QUESTION = "Which river flows through Paris?"
TOKENS = 2
ADMIT_AFTER = 2


def config_at(data_dir: Path, cache_dir: Path, **changes) -> ServerConfig:
    """No KV at ingestion by default (precompute_kv false: policy none)."""
    return ServerConfig(data_dir=data_dir, port=0, cache_dir=cache_dir, warm_up=False, precompute_kv=False, **changes)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_cache_dir, models):
    """Nothing kept in the worker's memory: every chunk's KV is a store hit or a miss."""
    config = config_at(tmp_path_factory.mktemp("kv-policy") / "data", model_cache_dir, kv_cache_bytes=0, metrics_port=0)
    with ServerThread(config, models) as running:
        yield running


@pytest.fixture(scope="module")
def admin(server: ServerThread):
    with Client(server.address, server.server.config.admin_key_path.read_text().strip()) as client:
        yield client


class Tenant:
    """A tenant with the two passages, one document each, and what the server knows of them."""

    def __init__(self, server: ServerThread, admin: Client, name: str, **settings) -> None:
        self.server = server
        self.name = name
        admin.create_tenant(name, tenant_admin_pb2.TenantSettings(**settings))
        self.client = Client(server.address, admin.create_api_key(name).api_key)
        self.client.upsert([[DocumentText(external_id=f"p{i}", text=text) for i, text in enumerate(PASSAGES)]])
        self.chunk_ids = [h.chunk_id for h in self.client.search(QUESTION, k=len(PASSAGES)).hits]

    @property
    def runtime(self) -> Runtime:
        return self.server.server.runtime

    def ask(self, mode: str = "blend") -> list[int]:
        """The answer's token ids, once the KV its misses computed has been stored or dropped."""
        replies = list(self.client.ask(QUESTION, k=len(PASSAGES), max_new_tokens=TOKENS, mode=mode))
        self.server._call(self.runtime.router.computed_kv_handed_over())
        return [r.token.token_id for r in replies if r.HasField("token")]

    def stored(self) -> int:
        """Chunks with KV of the workers' model."""
        fingerprint = self.runtime.router.kv_fingerprint
        return sum(c.kv_fingerprint == fingerprint for c in self.runtime.store.readable_chunks(self.name, self.chunk_ids))

    def counters(self):
        return self.runtime.kv_ledger.snapshot()[self.name]


@pytest.fixture(scope="module")
def references(server, admin) -> Callable[[str], list[int]]:
    """The answer in a mode from KV stored as ingestion stores it (the eager path), for the same passages and question."""
    eager = Tenant(server, admin, "reference", kv_policy="eager")
    eager.runtime.store.attach_kv(eager.name, _computed(eager), eager.runtime.router.kv_fingerprint)
    assert eager.stored() == len(PASSAGES)
    return functools.cache(eager.ask)


@pytest.fixture(scope="module")
def reference(references) -> list[int]:
    return references("blend")


def _computed(tenant: Tenant) -> list[tuple[int, bytes]]:
    """Each chunk's KV as ingestion computes it: on the worker, in the tenant's codec."""
    runtime = tenant.runtime
    chunks = runtime.store.readable_chunks(tenant.name, tenant.chunk_ids)
    blobs = tenant.server._call(runtime.router.precompute_kv([c.token_ids for c in chunks], runtime.kv_codec(tenant.name)))
    return [(c.chunk_id, blob) for c, blob in zip(chunks, blobs)]


def test_lazy_stores_at_the_first_miss_and_hits_after(server, admin, reference) -> None:
    lazy = Tenant(server, admin, "lazy", kv_policy="lazy")
    assert lazy.stored() == 0
    assert lazy.ask() == reference
    assert lazy.stored() == len(PASSAGES)
    assert lazy.counters().misses[MissCause.NEVER_COMPUTED] == len(PASSAGES) and lazy.counters().kept == len(PASSAGES)
    assert lazy.ask() == reference
    assert lazy.counters().hits == len(PASSAGES) and lazy.counters().recompute_s > 0


def test_metrics_report_each_tenants_hits_misses_and_recompute_time(server, admin, reference) -> None:
    lazy = Tenant(server, admin, "measured", kv_policy="lazy")
    lazy.ask()
    lazy.ask()
    samples = scrape(server.server.metrics_port)
    assert samples['tenantkv_kv_hits_total{tenant="measured"}'] == len(PASSAGES)
    assert samples['tenantkv_kv_misses_total{cause="never_computed",tenant="measured"}'] == len(PASSAGES)
    assert samples['tenantkv_kv_misses_total{cause="stale",tenant="measured"}'] == 0
    assert samples['tenantkv_kv_kept_on_miss_total{tenant="measured"}'] == len(PASSAGES)
    assert samples['tenantkv_kv_recompute_seconds_total{tenant="measured"}'] > 0


def test_admit_on_reuse_stores_at_the_nth_retrieval(server, admin, reference) -> None:
    reuse = Tenant(server, admin, "reuse", kv_policy="admit_on_reuse", kv_admit_after=ADMIT_AFTER)
    assert reuse.ask() == reference
    assert reuse.stored() == 0
    assert reuse.ask() == reference
    assert reuse.stored() == len(PASSAGES)
    assert reuse.ask() == reference
    counters = reuse.counters()
    assert (counters.hits, counters.misses[MissCause.NEVER_COMPUTED], counters.kept) == (2, 4, 2)


def test_a_full_prefill_counts_as_a_retrieval_but_computes_no_chunk_kv(server, admin) -> None:
    reuse = Tenant(server, admin, "reuse-full", kv_policy="admit_on_reuse", kv_admit_after=ADMIT_AFTER)
    reuse.ask(mode="full_prefill")
    assert reuse.stored() == 0 and reuse.name not in reuse.runtime.kv_ledger.snapshot()
    reuse.ask()  # the second retrieval: admitted
    assert reuse.stored() == len(PASSAGES)


def test_none_never_stores(server, admin, reference) -> None:
    none = Tenant(server, admin, "none", kv_policy="none")
    assert [none.ask(), none.ask()] == [reference, reference]
    assert none.stored() == 0
    counters = none.counters()
    assert (counters.hits, counters.misses[MissCause.NEVER_COMPUTED], counters.kept) == (0, 4, 0)


def test_the_server_default_policy_follows_precompute_kv(server, admin, reference) -> None:
    default = Tenant(server, admin, "default")
    assert default.runtime.kv_policy(default.name) == "none"
    assert default.ask() == reference and default.stored() == 0


def test_eager_stores_again_the_kv_it_lost(server, admin, reference) -> None:
    eager = Tenant(server, admin, "eager", kv_policy="eager")
    eager.runtime.store.drop_kv(eager.chunk_ids)  # as its budget would, or never computed
    assert eager.ask() == reference
    assert eager.stored() == len(PASSAGES)
    assert eager.ask() == reference and eager.counters().hits == len(PASSAGES)


@pytest.mark.parametrize("policy, stored_after", [("lazy", len(PASSAGES)), ("none", 0)])
def test_kv_of_another_model_is_a_miss_then_replaced_or_dropped(server, admin, reference, policy: str, stored_after: int) -> None:
    tenant = Tenant(server, admin, f"stale-{policy}", kv_policy=policy)
    runtime = tenant.runtime
    runtime.store.attach_kv(tenant.name, _computed(tenant), "an-older-model")
    assert tenant.stored() == 0 and all(c.has_kv for c in runtime.store.readable_chunks(tenant.name, tenant.chunk_ids))
    assert tenant.ask() == reference
    assert tenant.counters().misses[MissCause.STALE] == len(PASSAGES)
    chunks = runtime.store.readable_chunks(tenant.name, tenant.chunk_ids)
    assert tenant.stored() == stored_after
    assert sum(c.has_kv for c in chunks) == stored_after  # the stale blobs are gone either way


def test_a_remote_worker_streams_back_the_kv_it_computed(tmp_path, model_cache_dir, models, reference) -> None:
    port = free_port()
    config = config_at(tmp_path / "data", model_cache_dir, workers=f"127.0.0.1:{port}")
    with ServerThread(config, models) as server, Client(server.address, config.admin_key_path.read_text().strip()) as admin:
        key = admin.create_api_key(worker=True).api_key
        with WorkerThread(WorkerServiceConfig(listen=f"127.0.0.1:{port}", store=server.address, api_key=key), models):
            wait_all_up(server)
            lazy = Tenant(server, admin, "remote", kv_policy="lazy")
            assert lazy.ask() == reference
            assert lazy.stored() == len(PASSAGES)


POLICIES = st.sampled_from(["eager", "lazy", "admit_on_reuse", "none"])


class PolicyMachine(RuleBasedStateMachine):
    """One tenant through random questions (any mode), policy changes, lost KV and KV of an older model.

    Model: the two chunks are always retrieved together, so one state covers both: no KV,
    stale KV or current KV, and their retrievals counted while the policy is admit_on_reuse."""

    server: ServerThread
    admin: Client
    references: Callable[[str], list[int]]
    names = itertools.count()

    @initialize(policy=POLICIES)
    def start(self, policy: str) -> None:
        self.policy = policy
        self.tenant = Tenant(self.server, self.admin, f"prop-{next(self.names)}", kv_policy=policy, kv_admit_after=ADMIT_AFTER)
        self.kv = "current" if self.tenant.stored() else "none"  # eager ingestion may have computed it
        self.retrievals = 0

    @rule(policy=POLICIES)
    def change_policy(self, policy: str) -> None:
        self.admin.update_tenant(self.tenant.name, tenant_admin_pb2.TenantSettings(kv_policy=policy, kv_admit_after=ADMIT_AFTER))
        self.policy = policy

    @rule(mode=st.sampled_from(["blend", "full_reuse", "full_prefill"]))
    def ask(self, mode: str) -> None:
        assert self.tenant.ask(mode) == self.references(mode)
        if self.policy == "admit_on_reuse":
            self.retrievals += 1
        if mode != "full_prefill" and self.kv != "current":
            self.kv = "current" if keeps(self.policy, self.retrievals, ADMIT_AFTER) else "none"

    @rule()
    def lose_kv(self) -> None:
        self.tenant.runtime.store.drop_kv(self.tenant.chunk_ids)
        self.kv = "none"

    @rule()
    def model_changed(self) -> None:
        runtime = self.tenant.runtime
        runtime.store.drop_kv(self.tenant.chunk_ids)
        runtime.store.attach_kv(self.tenant.name, _computed(self.tenant), "an-older-model")
        self.kv = "stale"

    @invariant()
    def stored_kv_is_what_the_policies_kept(self) -> None:
        with_kv = sum(c.has_kv for c in self.tenant.runtime.store.readable_chunks(self.tenant.name, self.tenant.chunk_ids))
        n = len(PASSAGES)
        assert (with_kv, self.tenant.stored()) == {"none": (0, 0), "stale": (n, 0), "current": (n, n)}[self.kv]


def test_any_sequence_answers_as_eager_and_stores_what_the_policies_keep(server, admin, references) -> None:
    PolicyMachine.server, PolicyMachine.admin, PolicyMachine.references = server, admin, staticmethod(references)
    run_state_machine_as_test(
        PolicyMachine,
        settings=settings(max_examples=4, stateful_step_count=8, deadline=None, suppress_health_check=list(HealthCheck)),
    )
