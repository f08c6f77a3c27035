"""The store's schema version, stamped on a new store and checked on an old one, and the
migrations that bring an older store to the current version at open.

A record type added later (a new named database, a new field) that older stores lack raises
SCHEMA_VERSION and adds its migration here.
"""

import logging
from typing import Callable

import lmdb
import numpy as np
import orjson

from store.env import U64, Env, dumps
from store.errors import FailedPrecondition
from store.kvblobs import ref_key
from store.vectors import safe_rows

# 2: every stored vector has unit norm; 3: KV blobs count references per tenant, listed in kvrefs
SCHEMA_VERSION = 3
MIGRATION_BATCH = 4096  # chunks a migration transaction rewrites

log = logging.getLogger(__name__)


def open_schema(env: Env, dim: int) -> None:
    """Stamp a new store with the current schema and `dim`; check that an existing one holds
    `dim`-d vectors in a schema this version reads (FailedPrecondition otherwise) and migrate it."""

    def stamp_or_check(txn: lmdb.Transaction) -> int:
        """The schema version the store holds (a new store gets the current one)."""
        meta = env.db["meta"]
        stored = txn.get(b"dim", db=meta)
        if stored is None:
            txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=meta)
            txn.put(b"dim", str(dim).encode(), db=meta)
            return SCHEMA_VERSION
        schema = int(txn.get(b"schema", db=meta))
        if not 1 <= schema <= SCHEMA_VERSION:
            raise FailedPrecondition(f"store schema {schema} is not one this version reads (1 to {SCHEMA_VERSION})")
        if int(stored) != dim:
            raise FailedPrecondition(f"dim: the store holds {int(stored)}-d vectors, not {dim}-d")
        return schema

    schema = env.write(stamp_or_check)
    if schema < 2:
        _migrate_to_unit_vectors(env)
    if schema < 3:
        _migrate_to_tenant_refs(env)


def _in_batches(env: Env, db: str, rewrite: Callable[[lmdb.Transaction, list[tuple[bytes, bytes]]], None], finish: Callable[[lmdb.Transaction], None]) -> None:
    """Run `rewrite` over every (key, value) of `db`, `MIGRATION_BATCH` of them a transaction,
    then `finish` in the transaction that finds no more.

    A migration so made is crash-safe when `rewrite` is idempotent and `finish` moves the schema
    version: a crash before the last transaction redoes the whole pass at the next start.
    """

    def step(txn: lmdb.Transaction, after: bytes | None) -> bytes | None:
        cursor = txn.cursor(db=env.db[db])
        found = cursor.set_range(after + b"\0") if after is not None else cursor.first()
        rows = []
        if found:
            for key, value in cursor:
                rows.append((bytes(key), bytes(value)))
                if len(rows) == MIGRATION_BATCH:
                    break
        if not rows:
            finish(txn)
            return None
        rewrite(txn, rows)
        return rows[-1][0]

    last = env.write(lambda txn: step(txn, None))
    while last is not None:
        last = env.write(lambda txn: step(txn, last))


def _migrate_to_unit_vectors(env: Env) -> None:
    """Schema 1 to 2: scale every stored vector to unit norm. A vector that cannot be made unit
    (zero, or not finite: schema 1 took any finite vector) is stored as zeros and logged."""
    unusable = 0

    def scale(txn: lmdb.Transaction, rows: list[tuple[bytes, bytes]]) -> None:
        nonlocal unusable
        fixed, zeroed = safe_rows(np.stack([np.frombuffer(value, dtype=np.float32) for _, value in rows]))
        unusable += zeroed
        for (key, _), row in zip(rows, fixed):
            txn.put(key, row.tobytes(), db=env.db["vectors"])

    _in_batches(env, "vectors", scale, lambda txn: txn.put(b"schema", b"2", db=env.db["meta"]))
    log.info("store schema 1 -> 2: vectors scaled to unit norm; %d zero or not finite, stored as zeros", unusable)


def _migrate_to_tenant_refs(env: Env) -> None:
    """Schema 2 to 3: a KV blob's reference count becomes a count per tenant, and each chunk's
    reference gets its `kvrefs` key. Until now a blob was salted with its owner, so every chunk
    referring to it belongs to one tenant: its count moves whole to that owner."""
    numbers = env.read(lambda txn: {bytes(name).decode(): orjson.loads(value)["number"] for name, value in txn.cursor(db=env.db["tenants"])})

    def reref(txn: lmdb.Transaction, rows: list[tuple[bytes, bytes]]) -> None:
        for chunk_key, value in rows:
            chunk = orjson.loads(value)
            if not chunk["kv"]:
                continue
            key = bytes.fromhex(chunk["kv"])
            txn.put(ref_key(numbers[chunk["owner"]], key, U64.unpack(chunk_key)[0]), b"", db=env.db["kvrefs"])
            blob = orjson.loads(txn.get(key, db=env.db["kvblobs"]))
            if isinstance(blob["refs"], int):
                blob["refs"] = {chunk["owner"]: blob["refs"]}
                txn.put(key, dumps(blob), db=env.db["kvblobs"])

    def finish(txn: lmdb.Transaction) -> None:
        orphans = [key for key, value in txn.cursor(db=env.db["kvblobs"]) if isinstance(orjson.loads(value)["refs"], int)]
        for key in orphans:  # counted references no chunk holds: nothing can read them
            txn.delete(key, db=env.db["kvblobs"])
        txn.put(b"schema", b"3", db=env.db["meta"])
        log.info("store schema 2 -> 3: KV references counted per tenant; %d blob records no chunk referred to dropped", len(orphans))

    _in_batches(env, "chunks", reref, finish)
