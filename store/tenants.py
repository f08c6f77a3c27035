"""Tenant records: name, number (never reused), state, settings, and the usage counts that the
other record modules keep in step inside their own transactions."""

from dataclasses import asdict
from itertools import islice
from typing import Iterator

import lmdb
import orjson

from store.cache import ReadCache
from store.env import U32, Env, dumps, now_ms
from store.errors import AlreadyExists, InvalidArgument, NotFound, QuotaExceeded
from store.records import KVUsage, Tenant, TenantSettings, TenantState, TenantStats
from store.validate import check_settings, check_tenant_name


# A tenant record's usage counts, kept in step by the record modules' own transactions.
USAGE = ("documents", "chunks", "text_bytes", "kv_bytes", "api_keys", "kv_dedup_bytes", "kv_evictions", "kv_evicted_bytes")


class Tenants:
    def __init__(self, env: Env, dim: int) -> None:
        self._env = env
        self._dim = dim
        self._settings: ReadCache[str, TenantSettings] = ReadCache()

    # ---- within a transaction of another record module

    def find(self, txn: lmdb.Transaction, name: str) -> dict | None:
        """The tenant's record, None if there is no such tenant."""
        raw = txn.get(name.encode(), db=self._env.db["tenants"])
        return None if raw is None else orjson.loads(raw)

    def record(self, txn: lmdb.Transaction, name: str, field: str = "tenant_id") -> dict:
        """The tenant's record; NotFound naming `field` if there is no such tenant."""
        record = self.find(txn, check_tenant_name(name, field))
        if record is None:
            raise NotFound(f"{field}: tenant {name!r} not found")
        return record

    def add_usage(self, txn: lmdb.Transaction, name: str, **amounts: int) -> None:
        """Add `amounts` (negative to subtract) to the tenant's usage counts (`USAGE`)."""
        if not any(amounts.values()):
            return
        record = self.record(txn, name)
        for field, amount in amounts.items():
            record[field] = record.get(field, 0) + amount
        self._put(txn, name, record)

    def check_quotas(self, txn: lmdb.Transaction, name: str) -> None:
        """Raise (aborting the transaction) when it leaves the tenant above its chunk quota.
        KV bytes have a budget instead (`store.budget`): what goes beyond it is evicted."""
        record = self.record(txn, name)
        used, limit = record["chunks"], record["settings"].get("max_chunks", 0)
        if limit and used > limit:
            raise QuotaExceeded(f"max_chunks: this batch would bring tenant {name!r} to {used}, above its quota of {limit}")

    def drop(self, txn: lmdb.Transaction, name: str) -> None:
        """Delete the tenant's record; the caller removes what refers to it in the same transaction
        and calls `forget_settings` after the commit."""
        txn.delete(name.encode(), db=self._env.db["tenants"])

    def forget_settings(self) -> None:
        self._settings.forget_all()

    def _put(self, txn: lmdb.Transaction, name: str, record: dict) -> None:
        txn.put(name.encode(), dumps(record), db=self._env.db["tenants"])

    # ---- the tenant calls of Store

    def create(self, name: str, settings: TenantSettings) -> Tenant:
        check_tenant_name(name)
        check_settings(settings)

        def create(txn: lmdb.Transaction) -> Tenant:
            if self.find(txn, name) is not None:
                raise AlreadyExists(f"tenant_id: tenant {name!r} exists already")
            number = int(txn.get(b"next_tenant", b"1", db=self._env.db["meta"]))
            txn.put(b"next_tenant", str(number + 1).encode(), db=self._env.db["meta"])
            record = dict(number=number, state=TenantState.ACTIVE.value, created=now_ms(), settings=asdict(settings), **dict.fromkeys(USAGE, 0))
            self._put(txn, name, record)
            return _tenant(name, record)

        return self._env.write(create)

    def update(self, txn: lmdb.Transaction, name: str, settings: TenantSettings) -> Tenant:
        """Replace the tenant's settings (checked by the caller, who calls `forget_settings` after
        the commit). A lower chunk quota applies to later writes; a lower KV budget is the
        caller's to enforce in the same transaction; a new sharing group salts new blobs only."""
        record = self.record(txn, name)
        record["settings"] = asdict(settings)
        self._put(txn, name, record)
        return _tenant(name, record)

    def get(self, name: str) -> Tenant:
        return _tenant(name, self._env.read(lambda txn: self.record(txn, name)))

    def settings(self, name: str) -> TenantSettings:
        """The tenant's settings, remembered until a tenant is updated or deleted: every data-plane
        call reads its request rate, and the read and parse were ~5% of a Search's server time."""
        return self._settings.get(name, lambda: self.get(name).settings)

    def list_all(self, after: str = "", limit: int | None = None) -> list[Tenant]:
        """Tenants in name order (LMDB's key order): all of them, or at most `limit` of those named after `after`."""
        return self._env.read(lambda txn: [_tenant(name, record) for name, record in self._scan(txn, after, limit)])

    def count(self) -> int:
        """How many tenants exist: LMDB's entry count, constant time however many there are."""
        return self._env.read(lambda txn: txn.stat(self._env.db["tenants"])["entries"])

    def list_with_stats(self, after: str = "", limit: int | None = None) -> list[tuple[Tenant, TenantStats]]:
        """`list_all` with each tenant's usage, read in the same transaction."""

        def scan(txn: lmdb.Transaction) -> list[tuple[Tenant, TenantStats]]:
            return [(_tenant(name, record), self._stats(txn, record)) for name, record in self._scan(txn, after, limit)]

        return self._env.read(scan)

    def kv_usage(self) -> list[KVUsage]:
        """Every tenant's KV figures, from the tenant records alone (one scan, no chunk counted)."""

        def scan(txn: lmdb.Transaction) -> list[KVUsage]:
            return [
                KVUsage(name, r["kv_bytes"], r.get("kv_dedup_bytes", 0), r.get("kv_evictions", 0), r.get("kv_evicted_bytes", 0))
                for name, r in self._scan(txn, "", None)
            ]

        return self._env.read(scan)

    def stats(self, name: str) -> TenantStats:
        return self._env.read(lambda txn: self._stats(txn, self.record(txn, name)))

    def _scan(self, txn: lmdb.Transaction, after: str, limit: int | None) -> Iterator[tuple[str, dict]]:
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InvalidArgument(f"limit: must be a positive integer or None, got {limit!r}")
        cursor = txn.cursor(db=self._env.db["tenants"])
        # A tenant name never holds NUL, so the first key at or past `after` + NUL is the first one after it.
        found = cursor.set_range(after.encode() + b"\0") if after else cursor.first()
        if not found:
            return
        for key, value in islice(cursor.iternext(), limit):
            yield key.decode(), orjson.loads(value)

    def _stats(self, txn: lmdb.Transaction, record: dict) -> TenantStats:
        """Usage from the tenant's record, and its readable chunks counted (the cost: one key per chunk)."""
        readable = sum(1 for _ in self._env.prefix_keys(txn, "readable", U32.pack(record["number"])))
        return TenantStats(
            documents=record["documents"],
            chunks=record["chunks"],
            granted_chunks=readable - record["chunks"],
            text_bytes=record["text_bytes"],
            vector_bytes=record["chunks"] * self._dim * 4,
            kv_bytes=record["kv_bytes"],
            api_keys=record["api_keys"],
        )


def _tenant(name: str, record: dict) -> Tenant:
    settings = TenantSettings(**record.get("settings", {}))
    return Tenant(name, record["number"], TenantState(record["state"]), record["created"], settings)
