"""The store's schema version, stamped on a new store and checked on an old one, and the
migrations that bring an older store to the current version at open.

A record type added later (a new named database, a new field) that older stores lack raises
SCHEMA_VERSION and adds its migration here.
"""

import logging

import lmdb
import numpy as np

from store.env import U64, Env
from store.errors import FailedPrecondition
from store.vectors import safe_rows

SCHEMA_VERSION = 2  # 2: every stored vector has unit norm
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
        if schema not in (1, SCHEMA_VERSION):
            raise FailedPrecondition(f"store schema {schema} is not one this version reads (1 or {SCHEMA_VERSION})")
        if int(stored) != dim:
            raise FailedPrecondition(f"dim: the store holds {int(stored)}-d vectors, not {dim}-d")
        return schema

    if env.write(stamp_or_check) == 1:
        _migrate_to_unit_vectors(env)


def _migrate_to_unit_vectors(env: Env) -> None:
    """Schema 1 to 2: scale every stored vector to unit norm, one batch of chunks a transaction.

    Crash-safe because it is idempotent: the version moves to 2 in the last transaction only,
    so a crash before it redoes the whole pass at the next start. A vector that cannot be made
    unit (zero, or not finite: schema 1 took any finite vector) is stored as zeros and logged.
    """
    unusable = 0

    def scale(txn: lmdb.Transaction, after: int) -> int:
        """Scale the batch of vectors after chunk `after`; returns the last chunk id scaled, 0 when done."""
        nonlocal unusable
        cursor = txn.cursor(db=env.db["vectors"])
        keys, rows = [], []
        if cursor.set_range(U64.pack(after + 1)):
            for key, value in cursor:
                keys.append(key)
                rows.append(np.frombuffer(value, dtype=np.float32))
                if len(keys) == MIGRATION_BATCH:
                    break
        if not keys:
            txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=env.db["meta"])
            return 0
        fixed, zeroed = safe_rows(np.stack(rows))
        unusable += zeroed
        for key, row in zip(keys, fixed):
            txn.put(key, row.tobytes(), db=env.db["vectors"])
        return U64.unpack(keys[-1])[0]

    last = env.write(lambda txn: scale(txn, 0))
    while last:
        last = env.write(lambda txn: scale(txn, last))
    log.info("store schema 1 -> %d: vectors scaled to unit norm; %d zero or not finite, stored as zeros", SCHEMA_VERSION, unusable)
