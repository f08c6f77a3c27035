"""Backups of the serving store onto the server host, and restore of one into a data directory.

A backup goes only under the configured backup root, into a new directory named by the request:
one path component, so no request can name a place elsewhere on the host. Backups run one at a
time and never beside a compaction, since both hold the compactor's lock: otherwise a compaction's
file swap would wait for a backup's LMDB copy, and every transaction would wait behind the swap
(see store.backup).
"""

import logging
import re
import shutil
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from server.config import ServerConfig
from store.backup import Manifest, read_manifest, restore
from store.errors import AlreadyExists, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class BackupReport:
    path: Path  # the backup's directory on the server host
    manifest: Manifest
    seconds: float


class Backups:
    """Backups of one store into `root` (None: backups are off), by `back_up` (the store's own)."""

    def __init__(self, root: Path | None, back_up: Callable[[Path], Manifest], compaction_lock: AbstractContextManager) -> None:
        self.root = root
        self._back_up = back_up
        self._compaction_lock = compaction_lock

    def destination(self, name: str) -> Path:
        """Where the backup `name` goes: InvalidArgument for a name that is not one plain path
        component, FailedPrecondition without a backup root, AlreadyExists if it is there."""
        if not NAME.fullmatch(name):
            raise InvalidArgument(f"name: {name[:140]!r} is not a backup name (1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit)")
        if self.root is None:
            raise FailedPrecondition("backups are off: the server has no backup_root configured")
        path = self.root.resolve() / name
        if path.exists():
            raise AlreadyExists(f"name: a backup {name!r} exists already")
        return path

    def back_up(self, name: str) -> BackupReport:
        """A consistent backup of the store as it serves, under the root as `name`; a backup that
        fails leaves no directory behind."""
        with self._compaction_lock:
            path = self.destination(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            try:
                manifest = self._back_up(path)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            seconds = time.perf_counter() - started
        log.info(
            "backup %s: %d tenants, %d chunks, %d KV blobs, %d files, %d bytes in %.2f s",
            path, manifest.tenants, manifest.chunks, manifest.kv_blobs, len(manifest.files), manifest.total_bytes, seconds,
        )
        return BackupReport(path, manifest, seconds)


def restore_data_dir(backup_dir: Path, config: ServerConfig) -> Manifest:
    """Lay out `config.data_dir` (absent or empty: FailedPrecondition otherwise) from a backup, as
    a data directory a server with `config` starts from. The store's API keys come back with it;
    no admin.key file does: the first start writes a new admin key, and the old ones still work."""
    data_dir = config.data_dir
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise FailedPrecondition(f"restore target {data_dir} is not an empty directory")
    manifest = read_manifest(backup_dir)
    if manifest.dim != config.dim:
        raise FailedPrecondition(f"dim: the backup holds {manifest.dim}-d vectors, the configuration says {config.dim}")
    return restore(backup_dir, config.store_config().path)
