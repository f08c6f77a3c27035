"""Online backup of a running store, and restore of a backup into a new store directory.

A backup is one consistent moment of the store, taken while it keeps serving: inside one LMDB
read transaction, the compacting copy of the environment (`Environment.copyfd(..., txn=...)`) and
descriptors opened on every KV segment that transaction's blob records point into (a compaction
removes a segment only once the transactions that could locate a blob in it have ended, as for
`Chunks.read_kv`). Blobs are appended and fsynced before the transaction that records them
commits, and segment bytes are never rewritten in place, so each segment's frames up to the last
blob the snapshot references are all there and stay as they are; the open descriptors keep them
readable after the transaction, even from a segment a compaction removes meanwhile. Frames no record of the snapshot points to keep their header and lose their payload
(zeros), so a backup holds no byte of a deleted chunk, like a compacted store.

Layout (the store directory's own): `lmdb/data.mdb`, `segments/<n>.seg`, and `manifest.json`
(files, sizes, SHA-256, schema, dim, creation time), written last and renamed into place after
everything else is durable: a directory without it is an unfinished backup, and `restore`
refuses it, as it refuses a file whose size or checksum differs from the manifest's.

A backup can be paced (`max_bytes_per_s`) so that it leaves the cores and the disk to the
requests it runs beside. Its read transaction lasts as long as the LMDB copy: meanwhile LMDB
cannot reuse the pages that writes free, a compaction's file swap or a map growth waits for it,
and new transactions wait behind them; a server keeps compactions out of a running backup.
"""

import hashlib
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import lmdb
import orjson

from store.env import Env, fsync_path, now_ms
from store.errors import Corrupted, FailedPrecondition
from store.schema import SCHEMA_VERSION
from store.segments import FRAME, MAGIC

BACKUP_FORMAT = 1
MANIFEST = "manifest.json"
LMDB_DIR = "lmdb"  # as the store directory names them (store.store.Store)
SEGMENTS_DIR = "segments"
LMDB_FILE = f"{LMDB_DIR}/data.mdb"
READ_BYTES = 1 << 20  # the piece a file is hashed and copied in


@dataclass(frozen=True, slots=True)
class BackupFile:
    path: str  # relative to the backup directory, "/"-separated
    size: int
    sha256: str  # hex


@dataclass(frozen=True, slots=True)
class Manifest:
    format: int
    schema: int
    dim: int
    created_unix_ms: int  # when the backup's read transaction began: the moment it holds
    tenants: int
    chunks: int
    kv_blobs: int
    files: tuple[BackupFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one read transaction saw, with descriptors that keep its segments' bytes readable."""

    lmdb_file: BackupFile
    taken_unix_ms: int
    schema: int
    dim: int
    tenants: int
    chunks: int
    kv_blobs: int
    segments: dict[str, tuple[int, set[int]]]  # file name -> (open descriptor, payload offsets of live blobs)


class Pace:
    """Holds a copy to `bytes_per_s` on average (0: as fast as it goes) by sleeping after each
    piece, so a backup leaves the cores and the disk to the requests it runs beside."""

    def __init__(self, bytes_per_s: int) -> None:
        self._rate = bytes_per_s
        self._started = time.monotonic()
        self._bytes = 0

    def __call__(self, n: int) -> None:
        if self._rate <= 0:
            return
        self._bytes += n
        ahead = self._bytes / self._rate - (time.monotonic() - self._started)
        if ahead > 0:
            time.sleep(ahead)


def backup(env: Env, segments_dir: Path, destination: Path, max_bytes_per_s: int = 0) -> Manifest:
    """Copy the store behind `env` (KV segments in `segments_dir`) into `destination`, a new or
    empty directory (FailedPrecondition otherwise), at most `max_bytes_per_s` (0: no limit);
    returns the manifest, written last."""
    destination.mkdir(parents=True, exist_ok=True)
    if any(destination.iterdir()):
        raise FailedPrecondition(f"backup destination {destination} is not empty")
    (destination / LMDB_DIR).mkdir()
    (destination / SEGMENTS_DIR).mkdir()
    pace = Pace(max_bytes_per_s)
    snapshot = env.read(lambda txn: _snapshot(env, txn, segments_dir, destination, pace))
    try:
        files = [snapshot.lmdb_file]
        for name, (fd, live) in sorted(snapshot.segments.items()):
            files.append(_copy_segment(fd, live, destination, f"{SEGMENTS_DIR}/{name}", pace))
    finally:
        for fd, _ in snapshot.segments.values():
            os.close(fd)
    for directory in (destination / LMDB_DIR, destination / SEGMENTS_DIR, destination):
        fsync_path(directory)
    manifest = Manifest(
        BACKUP_FORMAT, snapshot.schema, snapshot.dim, snapshot.taken_unix_ms, snapshot.tenants, snapshot.chunks, snapshot.kv_blobs, tuple(files)
    )
    _write_manifest(destination, manifest)
    return manifest


def _snapshot(env: Env, txn: lmdb.Transaction, segments_dir: Path, destination: Path, pace: Pace) -> _Snapshot:
    """In one read transaction: the live blobs' places, a descriptor on each segment holding
    them, and the compacting copy of the environment."""
    taken_unix_ms = now_ms()
    live: dict[int, set[int]] = {}
    for _, raw in txn.cursor(db=env.db["kvblobs"]):
        blob = orjson.loads(raw)
        live.setdefault(blob["segment"], set()).add(blob["offset"])
    paths = {int(p.stem): p for p in segments_dir.glob("*.seg")}
    segments: dict[str, tuple[int, set[int]]] = {}
    try:
        for number, offsets in live.items():
            if number not in paths:
                raise Corrupted(f"KV segment {number} is missing")
            segments[paths[number].name] = (os.open(paths[number], os.O_RDONLY), offsets)
        lmdb_file = _stream_lmdb(env, txn, destination, pace)
    except BaseException:
        for fd, _ in segments.values():
            os.close(fd)
        raise
    meta = env.db["meta"]
    return _Snapshot(
        lmdb_file=lmdb_file,
        taken_unix_ms=taken_unix_ms,
        schema=int(txn.get(b"schema", db=meta)),
        dim=int(txn.get(b"dim", db=meta)),
        tenants=txn.stat(env.db["tenants"])["entries"],
        chunks=txn.stat(env.db["chunks"])["entries"],
        kv_blobs=txn.stat(env.db["kvblobs"])["entries"],
        segments=segments,
    )


def _stream_lmdb(env: Env, txn: lmdb.Transaction, destination: Path, pace: Pace) -> BackupFile:
    """LMDB's compacting copy of the environment as `txn` sees it, through a pipe that a thread
    drains into the backup, hashing as it writes: the file is written and read once, at `pace`."""
    read_end, write_end = os.pipe()
    drained: list[BackupFile | BaseException] = []

    def drain() -> None:
        try:
            with os.fdopen(read_end, "rb") as source, (destination / LMDB_FILE).open("wb") as out:
                drained.append(_copy(source, LMDB_FILE, out, pace))
                out.flush()
                os.fsync(out.fileno())
        except BaseException as exc:  # noqa: BLE001 - handed to the copying thread, which raises it
            drained.append(exc)

    drainer = threading.Thread(target=drain, name="backup-lmdb")
    drainer.start()
    try:
        env.lmdb.copyfd(write_end, compact=True, txn=txn)
    finally:
        os.close(write_end)
        drainer.join()
        if isinstance(drained[0], BaseException):
            raise drained[0]  # the drain's failure is why the copy failed too (a closed pipe)
    return drained[0]


def _copy_segment(fd: int, live: set[int], destination: Path, relative: str, pace: Pace) -> BackupFile:
    """Write the segment's frames up to its last live blob, zeros for the payloads no live blob
    has; Corrupted if its frames do not lead to every live blob."""
    end = max(live)  # the last live payload's start; the walk stops after its frame
    digest, pos, found = hashlib.sha256(), 0, 0
    with (destination / relative).open("wb") as out:
        while pos < end:
            header = os.pread(fd, FRAME.size, pos)
            magic, length, _ = FRAME.unpack(header) if len(header) == FRAME.size else (b"", 0, 0)
            if magic != MAGIC:
                break
            payload_at = pos + FRAME.size
            payload = os.pread(fd, length, payload_at) if payload_at in live else bytes(length)
            if len(payload) != length:
                break
            found += payload_at in live
            for piece in (header, payload):
                out.write(piece)
                digest.update(piece)
            pos = payload_at + length
            pace(FRAME.size + length)
        out.flush()
        os.fsync(out.fileno())
    if found != len(live):
        raise Corrupted(f"KV segment {Path(relative).name}: {len(live) - found} live blobs are not at a frame; the segment is damaged")
    return BackupFile(relative, pos, digest.hexdigest())


def _copy(source: BinaryIO, relative: str, out: BinaryIO, pace: Pace) -> BackupFile:
    """Copy `source` to `out` in pieces at `pace`; the size and SHA-256 of what went through."""
    digest, size = hashlib.sha256(), 0
    while piece := source.read(READ_BYTES):
        digest.update(piece)
        size += len(piece)
        out.write(piece)
        pace(len(piece))
    return BackupFile(relative, size, digest.hexdigest())


def _write_manifest(destination: Path, manifest: Manifest) -> None:
    """The manifest, durable under a temporary name first, then renamed into place."""
    temporary = destination / (MANIFEST + ".partial")
    with temporary.open("wb") as f:
        f.write(orjson.dumps(asdict(manifest), option=orjson.OPT_INDENT_2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, destination / MANIFEST)
    fsync_path(destination)


def read_manifest(backup_dir: Path) -> Manifest:
    """The backup's manifest; Corrupted if it is missing (an unfinished backup) or malformed."""
    path = backup_dir / MANIFEST
    try:
        raw = orjson.loads(path.read_bytes())
        files = tuple(BackupFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in raw.pop("files"))
        manifest = Manifest(**{k: int(v) for k, v in raw.items()}, files=files)
    except FileNotFoundError as exc:
        raise Corrupted(f"{path} is missing: {backup_dir} is not a finished backup") from exc
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise Corrupted(f"{path} cannot be read as a backup manifest: {exc}") from exc
    if manifest.format != BACKUP_FORMAT:
        raise FailedPrecondition(f"{path}: backup format {manifest.format}, this version reads {BACKUP_FORMAT}")
    if manifest.schema > SCHEMA_VERSION:
        raise FailedPrecondition(f"{path}: store schema {manifest.schema} is newer than this version's ({SCHEMA_VERSION})")
    for f in manifest.files:
        parts = PurePosixPath(f.path).parts
        if len(parts) != 2 or parts[0] not in (LMDB_DIR, SEGMENTS_DIR) or parts[1] in ("", ".", ".."):
            raise Corrupted(f"{path}: {f.path!r} is not a file of a backup")
    if LMDB_FILE not in {f.path for f in manifest.files}:
        raise Corrupted(f"{path} does not list {LMDB_FILE}")
    return manifest


def restore(backup_dir: Path, target: Path) -> Manifest:
    """Lay the backup in `backup_dir` out as a store directory at `target`, which must be absent
    or empty (FailedPrecondition otherwise). Every file is checked against the manifest as it is
    copied (Corrupted naming the first that differs), into a sibling directory renamed to
    `target` only when all of it is durable, so a failed or killed restore leaves no store."""
    manifest = read_manifest(backup_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FailedPrecondition(f"restore target {target} is not an empty directory")
    staging = target.with_name(f".{target.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)  # what a restore cut short left
    try:
        for directory in (LMDB_DIR, SEGMENTS_DIR):
            (staging / directory).mkdir(parents=True)
        for expected in manifest.files:
            _restore_file(backup_dir, staging, expected)
        for directory in (staging / LMDB_DIR, staging / SEGMENTS_DIR, staging):
            fsync_path(directory)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
        fsync_path(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _restore_file(backup_dir: Path, staging: Path, expected: BackupFile) -> None:
    source = backup_dir / expected.path
    if not source.is_file():
        raise Corrupted(f"backup file {source} is missing")
    with source.open("rb") as f, (staging / expected.path).open("wb") as out:
        copied = _copy(f, expected.path, out, Pace(0))
        out.flush()
        os.fsync(out.fileno())
    if copied.size != expected.size:
        raise Corrupted(f"backup file {source} is {copied.size} bytes, the manifest says {expected.size}: truncated or changed")
    if copied.sha256 != expected.sha256:
        raise Corrupted(f"backup file {source} fails its SHA-256 checksum: corrupted")
