"""Online backup and restore against a real store in tmp_path: a backup taken under writes (and
under compactions) restores every batch acknowledged before it began and no batch half, with each
tenant's chunks readable only by their readers; a damaged, truncated or unfinished backup is
refused, naming the file."""

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from store.backup import MANIFEST, read_manifest, restore
from store.config import StoreConfig
from store.errors import Corrupted, FailedPrecondition, NotFound
from store.records import ChunkInput, DocumentInput
from store.store import Store
from tests.store.canary import files_holding, stored_bytes

DIM = 8
BATCH_DOCS = 3  # documents a batch writes, in one transaction
TENANTS = ("alice", "bob")  # batches alternate between them; carol reads only what alice grants


KV_BYTES = 2000


def batch(n: int, kv_bytes: int = KV_BYTES) -> list[DocumentInput]:
    """Batch `n`: BATCH_DOCS one-chunk documents "b{n}-{i}" whose text, vector and KV derive from (n, i)."""
    docs = []
    for i in range(BATCH_DOCS):
        rng = np.random.default_rng([n, i])
        vector = rng.standard_normal(DIM).astype(np.float32)
        chunk = ChunkInput(
            text=f"batch {n} document {i}", token_ids=rng.integers(0, 1 << 20, 16).astype(np.int32),
            vector=vector / np.linalg.norm(vector), kv_blob=rng.bytes(kv_bytes),
        )
        docs.append(DocumentInput(external_id=f"b{n}-{i}", metadata={"batch": n}, chunks=[chunk]))
    return docs


def owner_of(n: int) -> str:
    return TENANTS[n % len(TENANTS)]


def open_store(path: Path) -> Store:
    return Store(StoreConfig(path=path, dim=DIM, max_segment_bytes=64 << 10))


class Writer(threading.Thread):
    """Upserts batch after batch, each to one tenant in one transaction, recording the acknowledged."""

    def __init__(self, store: Store, first: int) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.next = first
        self.acked: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            n = self.next
            self.store.upsert(owner_of(n), batch(n))
            self.acked.append(n)
            self.next += 1

    def wait_for(self, count: int) -> None:
        while len(self.acked) < count:
            time.sleep(0.005)


def documents_present(store: Store, n: int) -> int:
    present = 0
    for doc in batch(n):
        try:
            store.document_chunk_ids(owner_of(n), [doc.external_id])
            present += 1
        except NotFound:
            pass
    return present


def check_batch(store: Store, n: int, granted_to_carol: bool = False, kv_bytes: int = KV_BYTES) -> None:
    """Batch n reads back whole, KV included, to its owner (and carol where granted), to no one else."""
    ids = store.document_chunk_ids(owner_of(n), [d.external_id for d in batch(n)]).tolist()
    readers = {owner_of(n), "carol"} if granted_to_carol else {owner_of(n)}
    for tenant in ("alice", "bob", "carol"):
        chunks = store.readable_chunks(tenant, ids)
        assert len(chunks) == (len(ids) if tenant in readers else 0), (tenant, n)
    for chunk_id, doc in zip(ids, batch(n, kv_bytes)):
        assert store.read_kv(chunk_id) == doc.chunks[0].kv_blob


@pytest.fixture
def store(tmp_path: Path):
    with open_store(tmp_path / "store") as store:
        for tenant in ("alice", "bob", "carol"):
            store.create_tenant(tenant)
        yield store


def test_a_backup_under_writes_restores_every_batch_acknowledged_before_it_and_none_half(store: Store, tmp_path: Path) -> None:
    granted = range(0, 40, 2)  # alice's batches, granted to carol before the writer starts
    for n in granted:
        store.upsert("alice", batch(n))
        store.grant("alice", [d.external_id for d in batch(n)], "carol")
    writer = Writer(store, first=40)
    writer.start()
    writer.wait_for(20)
    acked_before = set(granted) | set(writer.acked)
    manifest = store.backup(tmp_path / "backup")
    assert len(writer.acked) + len(granted) > len(acked_before), "no write was acknowledged while the backup ran"
    writer.wait_for(len(writer.acked) + 5)
    writer.stop.set()
    writer.join()

    assert restore(tmp_path / "backup", tmp_path / "restored") == manifest
    with open_store(tmp_path / "restored") as restored:
        present = {n: documents_present(restored, n) for n in [*granted, *writer.acked]}
        assert {count for count in present.values()} <= {0, BATCH_DOCS}, "a batch restored in part"
        kept = {n for n, count in present.items() if count}
        assert acked_before <= kept
        for n in sorted(kept):
            check_batch(restored, n, granted_to_carol=n in granted)
        assert manifest.chunks == len(kept) * BATCH_DOCS
        restored.upsert("bob", batch(10_001))  # the restored store takes writes, into a new segment frame
        check_batch(restored, 10_001)


def test_a_backup_holds_no_byte_of_a_chunk_deleted_before_it(store: Store, tmp_path: Path) -> None:
    store.upsert(owner_of(0), batch(0))
    store.upsert(owner_of(1), batch(1))
    [gone] = store.document_chunk_ids(owner_of(1), ["b1-1"]).tolist()
    canary = stored_bytes(store, gone).named()
    store.delete_documents(owner_of(1), ["b1-1"])
    assert files_holding(store.config.path, canary), "the deleted chunk's bytes should still be in the store's files"
    store.backup(tmp_path / "backup")
    assert files_holding(tmp_path / "backup", canary) == {}
    restore(tmp_path / "backup", tmp_path / "restored")
    with open_store(tmp_path / "restored") as restored:
        check_batch(restored, 0)
        assert documents_present(restored, 1) == BATCH_DOCS - 1


def test_a_backup_taken_while_compactions_run_restores_everything(store: Store, tmp_path: Path) -> None:
    """Compactions move live blobs into new segments and remove the old ones while backups run."""
    for n in range(30):
        store.upsert(owner_of(n), batch(n))
        store.delete_documents(owner_of(n), [f"b{n}-0"])  # dead bytes in every segment, so each compaction moves blobs
    stop = threading.Event()
    compactions = 0

    def compact() -> None:
        nonlocal compactions
        while not stop.is_set():
            store.compact()
            compactions += 1
            store.upsert(owner_of(compactions), [batch(compactions)[0]])  # rewrites b{n}-0: dead bytes again

    compactor = threading.Thread(target=compact, daemon=True)
    compactor.start()
    try:
        for i in range(5):
            store.backup(tmp_path / f"backup{i}")
    finally:
        stop.set()
        compactor.join()
    assert compactions > 0
    for i in range(5):
        restore(tmp_path / f"backup{i}", tmp_path / f"restored{i}")
        with open_store(tmp_path / f"restored{i}") as restored:
            for n in range(30):
                ids = restored.document_chunk_ids(owner_of(n), [f"b{n}-1", f"b{n}-2"]).tolist()
                for chunk_id, doc in zip(ids, batch(n)[1:]):
                    assert restored.read_kv(chunk_id) == doc.chunks[0].kv_blob


def test_a_paced_backup_holds_its_rate(store: Store, tmp_path: Path) -> None:
    for n in range(20):
        store.upsert(owner_of(n), batch(n, kv_bytes=50_000))
    size = store.backup(tmp_path / "fast").total_bytes
    started = time.perf_counter()
    paced = store.backup(tmp_path / "paced", max_bytes_per_s=size * 2)
    assert time.perf_counter() - started >= 0.45
    assert paced.total_bytes == size
    restore(tmp_path / "paced", tmp_path / "restored")
    with open_store(tmp_path / "restored") as restored:
        for n in range(20):
            check_batch(restored, n, kv_bytes=50_000)


def _segment(backup_dir: Path) -> Path:
    return sorted((backup_dir / "segments").glob("*.seg"))[0]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


DAMAGE = {
    "segment flipped": (_segment, _flip_byte, "fails its SHA-256 checksum"),
    "segment truncated": (_segment, _truncate, "truncated"),
    "lmdb flipped": (lambda d: d / "lmdb" / "data.mdb", _flip_byte, "fails its SHA-256 checksum"),
    "lmdb truncated": (lambda d: d / "lmdb" / "data.mdb", _truncate, "truncated"),
    "lmdb missing": (lambda d: d / "lmdb" / "data.mdb", Path.unlink, "is missing"),
    "manifest missing": (lambda d: d / MANIFEST, Path.unlink, "not a finished backup"),
    "manifest truncated": (lambda d: d / MANIFEST, _truncate, "cannot be read as a backup manifest"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_restore_refuses_a_damaged_backup_naming_the_file(store: Store, tmp_path: Path, damage: str) -> None:
    for n in range(4):
        store.upsert(owner_of(n), batch(n))
    store.backup(tmp_path / "backup")
    locate, harm, says = DAMAGE[damage]
    path = locate(tmp_path / "backup")
    harm(path)
    with pytest.raises(Corrupted, match=says) as refused:
        restore(tmp_path / "backup", tmp_path / "restored")
    assert path.name in str(refused.value)
    assert list(tmp_path.glob("*restor*")) == []


def test_a_manifest_naming_a_path_outside_the_backup_is_refused(store: Store, tmp_path: Path) -> None:
    store.backup(tmp_path / "backup")
    manifest = tmp_path / "backup" / MANIFEST
    manifest.write_text(manifest.read_text().replace('"lmdb/data.mdb"', '"../../etc/passwd"'))
    with pytest.raises(Corrupted, match="passwd"):
        read_manifest(tmp_path / "backup")


def test_backup_and_restore_refuse_a_non_empty_directory(store: Store, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    with pytest.raises(FailedPrecondition, match="not empty"):
        store.backup(tmp_path / "busy")
    store.backup(tmp_path / "backup")
    with pytest.raises(FailedPrecondition, match="not an empty directory"):
        restore(tmp_path / "backup", tmp_path / "busy")
    assert (tmp_path / "busy" / "something").read_text() == "x"
    (tmp_path / "empty").mkdir()
    restore(tmp_path / "backup", tmp_path / "empty")
    with open_store(tmp_path / "empty") as restored:
        assert [t.name for t in restored.list_tenants()] == ["alice", "bob", "carol"]


def test_a_backup_killed_midway_is_refused_by_restore(store: Store, tmp_path: Path) -> None:
    """A child backs the store up in a loop and is SIGKILLed while its third backup copies files:
    the finished ones restore, the cut one has no manifest and restore refuses it."""
    for n in range(60):
        store.upsert(owner_of(n), batch(n, kv_bytes=200_000))  # 36 MB of segments: a backup takes a while
    store.close()
    child = textwrap.dedent(
        f"""
        from pathlib import Path
        from tests.store.test_backup import open_store
        with open_store(Path({str(tmp_path / "store")!r})) as store:
            for i in range(1000):
                print("start", i, flush=True)
                store.backup(Path({str(tmp_path)!r}) / f"backup{{i}}")
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    for line in process.stdout:
        if line.split() == ["start", "2"]:
            break
    cut = tmp_path / "backup2"
    while not any((cut / "segments").glob("*.seg")):
        assert process.poll() is None, "the backing-up child died"
        time.sleep(0.001)
    process.kill()
    process.wait()
    assert not (cut / MANIFEST).exists(), "the backup finished before the kill"
    with pytest.raises(Corrupted, match="not a finished backup"):
        restore(cut, tmp_path / "restored-cut")
    restore(tmp_path / "backup1", tmp_path / "restored")
    with open_store(tmp_path / "restored") as restored:
        for n in range(60):
            check_batch(restored, n, kv_bytes=200_000)
