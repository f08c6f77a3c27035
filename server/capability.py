"""Capabilities: short-lived grants, HMAC-signed by the server, naming the chunks a worker may fetch.

The router authorises; a worker only presents what it was given. A token reads
`<expiry ms>:<chunk ids, comma-separated>:<hex HMAC-SHA256 of the first two>`. The secret is
drawn at start, so a restart voids every outstanding capability (they live seconds anyway).
"""

import hashlib
import hmac
import secrets
import time
from typing import Callable, Iterable, Sequence

from store.errors import PermissionDenied

DEFAULT_TTL_S = 60.0


class Capabilities:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._secret = secrets.token_bytes(32)
        self._ttl_s = ttl_s
        self._clock = clock

    def issue(self, chunk_ids: Iterable[int]) -> str:
        expiry_ms = int((self._clock() + self._ttl_s) * 1000)
        payload = f"{expiry_ms}:{','.join(str(int(i)) for i in chunk_ids)}"
        return f"{payload}:{self._mac(payload)}"

    def check(self, token: str, chunk_ids: Sequence[int]) -> None:
        """PermissionDenied unless `token` is ours, unexpired, and names every one of `chunk_ids`."""
        payload, _, mac = token.rpartition(":")
        if not payload or not hmac.compare_digest(mac, self._mac(payload)):
            raise PermissionDenied("capability: missing or not signed by this server")
        expiry, _, ids = payload.partition(":")
        if int(expiry) < self._clock() * 1000:
            raise PermissionDenied("capability: expired")
        granted = {int(i) for i in ids.split(",") if i}
        if not set(chunk_ids) <= granted:
            raise PermissionDenied("capability: does not name every chunk asked for")

    def _mac(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()
