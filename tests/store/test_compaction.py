"""Compaction against a real store in tmp_path: a deleted chunk's bytes are on disk until it runs
and nowhere after; live data, KV included, survives it, writes between its steps, a stop part
way, reopening and a crash at any moment."""

import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from store import compaction
from store.config import StoreConfig
from store.errors import Unavailable
from store.records import ChunkInput, DocumentInput
from store.store import Store
from tests.store.canary import files_holding, stored_bytes
from tests.store.invariants import check_kv_records

DIM = 8
KV_BYTES = 3000  # a canary's blob


def canary(external_id: str, seed: int, dim: int = DIM, tokens: int = 12, sentences: int = 1) -> DocumentInput:
    """One chunk whose text, vector, token ids and KV blob are each found nowhere else."""
    rng = np.random.default_rng(seed)
    vector = rng.standard_normal(dim).astype(np.float32)
    text = " ".join(f"Kanarienvogel {rng.integers(1 << 62):x} — sings in the mine until it does not." for _ in range(sentences))
    return DocumentInput(
        external_id=external_id,
        metadata={},
        chunks=[
            ChunkInput(
                text=text,
                token_ids=rng.integers(1 << 20, 1 << 30, tokens).astype(np.int32),
                vector=vector / np.linalg.norm(vector),
                kv_blob=rng.bytes(KV_BYTES),
            )
        ],
    )


# Small records lie inside shared leaf pages; large ones (a 384-d vector, 6 KB of text, 8 KB of
# token ids) fill a leaf or take overflow pages of their own.
SIZES = {"small": dict(dim=DIM), "large": dict(dim=384, tokens=2048, sentences=80)}


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(path=tmp_path / "store", dim=DIM)


def _assert_reads_back(store: Store, tenant: str, chunk_id: int, expected: DocumentInput) -> None:
    [chunk] = store.readable_chunks(tenant, [chunk_id])
    assert chunk.text == expected.chunks[0].text
    np.testing.assert_array_equal(chunk.token_ids, expected.chunks[0].token_ids)
    assert store.read_kv(chunk_id) == expected.chunks[0].kv_blob


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("deletion", ["document", "tenant"])
def test_nothing_of_a_deleted_chunk_is_left_after_compaction(tmp_path: Path, deletion: str, size: str) -> None:
    config = StoreConfig(path=tmp_path / "store", dim=SIZES[size]["dim"])
    with Store(config) as store:
        store.create_tenant("alice")
        store.create_tenant("bob")
        kept, bird = canary("kept", 1, **SIZES[size]), canary("bird", 2, **SIZES[size])
        kept_id = int(store.upsert("bob" if deletion == "tenant" else "alice", [kept]).added[0])
        bird_id = int(store.upsert("alice", [bird]).added[0])
        stored = stored_bytes(store, bird_id)
        assert stored.kv == bird.chunks[0].kv_blob and stored.token_ids == bird.chunks[0].token_ids.tobytes()
        if deletion == "document":
            store.delete_documents("alice", ["bird"])
        else:
            store.delete_tenant("alice")
        assert sorted(files_holding(config.path, stored.named())) == ["kv", "text", "token_ids", "vector"]  # deleted is not gone yet
        report = store.compact()
        assert files_holding(config.path, stored.named()) == {}
        assert report.bytes_after < report.bytes_before and report.segment_bytes_after > 0
        _assert_reads_back(store, "bob" if deletion == "tenant" else "alice", kept_id, kept)
    with Store(config) as store:
        _assert_reads_back(store, "bob" if deletion == "tenant" else "alice", kept_id, kept)
        assert store.readable_chunks("bob", [bird_id]) == []


def test_segments_with_only_live_blobs_are_kept_and_numbers_go_on(config: StoreConfig) -> None:
    small = StoreConfig(path=config.path, dim=DIM, max_segment_bytes=4096)  # one blob a segment
    with Store(small) as store:
        store.create_tenant("alice")
        ids = [int(store.upsert("alice", [canary(f"d{i}", 10 + i)]).added[0]) for i in range(4)]
        segments = small.path / "segments"
        before = sorted(p.name for p in segments.glob("*.seg"))
        store.delete_documents("alice", ["d1", "d3"])  # d3's blob lies in the segment appends go to
        store.compact()
        after = sorted(p.name for p in segments.glob("*.seg"))
        assert [before[0], before[2]] == after[:2] and before[3] not in after and before[1] not in after
        store.delete_documents("alice", ["d0", "d2"])
        store.compact()
        assert list(segments.glob("*.seg")) == []
    with Store(small) as store:  # a store whose segments all went starts a new one
        new = canary("new", 20)
        [new_id] = store.upsert("alice", [new]).added
        _assert_reads_back(store, "alice", int(new_id), new)
        assert store.readable_chunks("alice", ids) == []


def test_compaction_under_reads_and_writes_loses_nothing_acknowledged(config: StoreConfig) -> None:
    with Store(config) as store:
        store.create_tenant("alice")
        acknowledged: dict[int, DocumentInput] = {}
        deleted: set[int] = set()  # marked before the delete starts, so a read never races it

        def write() -> None:
            for i in range(60):
                doc = canary(f"w{i}", 100 + i)
                chunk_id = int(store.upsert("alice", [doc]).added[0])
                acknowledged[chunk_id] = doc
                if i % 3 == 0:
                    deleted.add(chunk_id)
                    store.delete_documents("alice", [f"w{i}"])

        def read(writer: Future) -> int:
            checked = 0
            while not writer.done() or not checked:
                for chunk_id, doc in list(acknowledged.items()):
                    if chunk_id not in deleted:
                        assert store.read_kv(chunk_id) == doc.chunks[0].kv_blob
                        checked += 1
            return checked

        with ThreadPoolExecutor(2) as pool:
            writer = pool.submit(write)
            reader = pool.submit(read, writer)
            compactions = 0
            while not writer.done() or compactions < 2:  # writes go on during a compaction: it may outlast them
                store.compact()
                compactions += 1
            writer.result()
            assert reader.result() > 0
        store.compact()
        live = {i: d for i, d in acknowledged.items() if i not in deleted}
        for chunk_id, doc in live.items():
            _assert_reads_back(store, "alice", chunk_id, doc)
        assert store.readable_chunks("alice", sorted(deleted)) == []
    with Store(config) as store:
        assert {c.chunk_id for c in store.readable_chunks("alice", sorted(acknowledged))} == set(live)


def _half_deleted(store: Store, n: int, seed: int) -> tuple[dict[int, DocumentInput], dict[str, DocumentInput]]:
    """`n` one-chunk documents of which every other one is deleted: (live by chunk id, deleted by external id)."""
    store.create_tenant("alice")
    docs = {f"h{i}": canary(f"h{i}", seed + i) for i in range(n)}
    ids = {name: int(store.upsert("alice", [doc]).added[0]) for name, doc in docs.items()}
    deleted = {name: docs[name] for name in list(docs)[::2]}
    store.delete_documents("alice", list(deleted))
    return {ids[name]: doc for name, doc in docs.items() if name not in deleted}, deleted


def _needles(doc: DocumentInput) -> dict[str, bytes]:
    return {"kv": doc.chunks[0].kv_blob, "text": doc.chunks[0].text.encode()}


def test_writes_go_on_between_the_steps_of_a_compaction(config: StoreConfig, monkeypatch) -> None:
    """At every step boundary a writer upserts a document and deletes one whose blob is being
    moved; each write finishes while the compaction runs, and after it every acknowledged write
    reads back and the next compaction leaves nothing of what was deleted."""
    monkeypatch.setattr(compaction, "COPY_BATCH_BYTES", 1)  # one blob a step
    small = StoreConfig(path=config.path, dim=DIM, max_segment_bytes=16384)
    with Store(small) as store, ThreadPoolExecutor(1) as writer:
        live, deleted = _half_deleted(store, 24, seed=200)
        written: list[int] = []

        def write() -> None:
            doc = canary(f"new{len(written)}", 300 + len(written))
            chunk_id = int(store.upsert("alice", [doc]).added[0])
            live[chunk_id] = doc
            victim = live.pop(min(live))  # the oldest: its blob lies in a segment being compacted, or moved
            store.delete_documents("alice", [victim.external_id])
            deleted[victim.external_id] = victim
            written.append(chunk_id)

        def write_meanwhile() -> bool:
            writer.submit(write).result(timeout=30)  # TimeoutError had it waited for the compaction
            return False

        moving = len(live)  # every segment holds a deleted blob: all live blobs move, one a step
        store.compact(stop=write_meanwhile)
        assert len(written) == moving + 1  # a write before each move and before the LMDB step
        for chunk_id, doc in live.items():
            _assert_reads_back(store, "alice", chunk_id, doc)
        store.compact()
        for doc in deleted.values():
            assert files_holding(config.path, _needles(doc)) == {}
    with Store(small) as store:
        for chunk_id, doc in live.items():
            _assert_reads_back(store, "alice", chunk_id, doc)


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_a_stopped_compaction_leaves_the_store_whole_and_the_next_one_finishes(config: StoreConfig, monkeypatch, steps: int) -> None:
    monkeypatch.setattr(compaction, "COPY_BATCH_BYTES", 1)
    small = StoreConfig(path=config.path, dim=DIM, max_segment_bytes=16384)
    with Store(small) as store:
        live, deleted = _half_deleted(store, 16, seed=400)
        asked = []

        def stop() -> bool:
            asked.append(True)
            return len(asked) > steps

        with pytest.raises(Unavailable):
            store.compact(stop=stop)
        assert len(asked) == steps + 1
        for chunk_id, doc in live.items():
            _assert_reads_back(store, "alice", chunk_id, doc)
    with Store(small) as store:
        for chunk_id, doc in live.items():
            _assert_reads_back(store, "alice", chunk_id, doc)
        store.compact()
        for doc in deleted.values():
            assert files_holding(config.path, _needles(doc)) == {}
        for chunk_id, doc in live.items():
            _assert_reads_back(store, "alice", chunk_id, doc)


# A compaction in the child's loop between writes (each write waits for it), or in a thread of
# its own beside them, moving one blob a step, so kills land inside its unlocked steps too.
COMPACTING = {
    "between_writes": "def compact_each(store): store.compact()",
    "beside_writes": textwrap.dedent(
        """
        def compact_forever(store):
            while True:
                store.compact()
        def compact_each(store):
            if not hasattr(compact_each, "thread"):
                compaction.COPY_BATCH_BYTES = 1
                compact_each.thread = threading.Thread(target=compact_forever, args=(store,), daemon=True)
                compact_each.thread.start()
        """
    ),
}


@pytest.mark.parametrize("budget_blobs", [0, 4])
@pytest.mark.parametrize("compacting", COMPACTING)
@pytest.mark.parametrize("delay_ms", [0, 7, 23])
def test_a_compaction_killed_at_any_moment_loses_nothing(config: StoreConfig, compacting: str, delay_ms: int, budget_blobs: int) -> None:
    """A child upserts, deletes and compacts in a loop and is SIGKILLed; every write it acknowledged
    reads back, and the next compaction leaves no deleted byte and no half-made copy behind. Under
    a KV budget of `budget_blobs` blobs (0: none) every write evicts too: a chunk's KV then reads
    back whole or not at all, and the next compaction leaves no evicted blob's byte either."""
    child = textwrap.dedent(
        f"""
        import sys
        import threading
        from pathlib import Path
        from store import compaction
        from store.config import StoreConfig
        from store.records import TenantSettings
        from store.store import Store
        from tests.store.test_compaction import canary
        """
    ) + COMPACTING[compacting] + textwrap.dedent(
        f"""
        with Store(StoreConfig(path=Path({str(config.path)!r}), dim={DIM}, max_segment_bytes=16384)) as store:
            store.create_tenant("alice", TenantSettings(max_kv_bytes={budget_blobs * KV_BYTES}))
            for i in range(10_000):
                store.upsert("alice", [canary(f"k{{i}}", i)])
                print("ack", i, flush=True)
                if i % 2:
                    store.delete_documents("alice", [f"k{{i}}"])
                    print("del", i, flush=True)
                compact_each(store)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    acked, dropped = set(), set()
    for line in process.stdout:
        verb, i = line.split()
        (acked if verb == "ack" else dropped).add(int(i))
        if len(acked) == 41:  # after "ack 40": every delete of an earlier document has been printed
            break
    assert len(acked) == 41, f"the child stopped early (exit {process.poll()})"
    threading.Event().wait(delay_ms / 1000)  # later lines go unread: only what was read is checked
    process.kill()
    process.wait()
    with Store(StoreConfig(path=config.path, dim=DIM, max_segment_bytes=16384)) as store:
        assert not (config.path / "lmdb.compact").exists()
        kept = [i for i in acked if i not in dropped]
        ids = store.document_chunk_ids("alice", [f"k{i}" for i in kept])
        evicted = []
        for chunk_id, i in zip(ids.tolist(), kept):
            expected = canary(f"k{i}", i)
            if budget_blobs and store.read_kv(chunk_id) is None:
                evicted.append(expected.chunks[0].kv_blob)
                assert store.readable_chunks("alice", [chunk_id])[0].text == expected.chunks[0].text
            else:
                _assert_reads_back(store, "alice", chunk_id, expected)
        assert len(evicted) >= (len(kept) - budget_blobs if budget_blobs else 0)
        check_kv_records(store)
        store.compact()
        for i in dropped:
            assert files_holding(config.path, _needles(canary(f"k{i}", i))) == {}
        for n, blob in enumerate(evicted):
            assert files_holding(config.path, {f"evicted{n}": blob}) == {}
