"""Store compaction for the server: on request, or in the background after a tenant's deletion."""

import logging
import threading

from store.compaction import Compaction
from store.errors import Unavailable
from store.store import Store

log = logging.getLogger(__name__)


class Compactor:
    def __init__(self, store: Store, stopping: threading.Event) -> None:
        self.store = store
        self.stopping = stopping  # set at shutdown: a queued compaction does not start, a running one stops at its next step
        self._lock = threading.RLock()  # one compaction at a time
        self._queue_lock = threading.Lock()  # guards the two below
        self._queued = False  # a background compaction is waiting for its turn
        self._thread: threading.Thread | None = None  # the newest background compaction

    @property
    def lock(self) -> threading.RLock:
        """Held while a compaction runs; a backup takes it too, so the two never interleave."""
        return self._lock

    def compact(self) -> Compaction:
        """Rewrite the store's files with live data only, so what was deleted cannot be read back
        from disk; reads go on, writes wait only for short moments. Unavailable if the server
        starts stopping first: the store is left consistent and the next compaction finishes."""
        with self._lock:
            report = self.store.compact(self.stopping.is_set)
        log.info(
            "store compacted in %.2f s: %d -> %d bytes (LMDB %d -> %d, KV segments %d -> %d)",
            report.seconds, report.bytes_before, report.bytes_after, report.lmdb_bytes_before,
            report.lmdb_bytes_after, report.segment_bytes_before, report.segment_bytes_after,
        )
        return report

    def compact_in_background(self) -> None:
        """Compact soon in a thread of its own (a tenant's deletion returns without waiting for it);
        requests that come while one waits its turn are served by that one."""
        with self._queue_lock:
            if self._queued:
                return
            self._queued = True
            self._thread = threading.Thread(target=self._compact_queued, name="compaction", daemon=True)
            self._thread.start()

    def _compact_queued(self) -> None:
        with self._lock:
            with self._queue_lock:
                self._queued = False
            if self.stopping.is_set():
                return
            try:
                self.compact()
            except Unavailable:
                log.info("background compaction cut short: the server is stopping; the next one finishes it")
            except Exception:  # noqa: BLE001 - the thread's end: log it; the next deletion or CompactStore retries
                log.exception("background compaction failed; deleted data stays on disk until the next one")

    def join(self) -> None:
        """Wait for the background compaction, if any (its thread ends after any queued before it)."""
        if self._thread is not None:
            self._thread.join()
