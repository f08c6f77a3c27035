"""A chunk's exact stored byte strings, and a search for them in every file under a directory:
the check that a deletion followed by a compaction leaves nothing of the chunk on disk."""

from dataclasses import dataclass
from pathlib import Path

import orjson

from store.env import U64
from store.store import Store


@dataclass(frozen=True, slots=True)
class StoredBytes:
    text: bytes  # the text as it lies inside the chunk's JSON record (UTF-8)
    vector: bytes  # float32, unit norm, as the store keeps it
    token_ids: bytes  # int32
    kv: bytes  # the KV blob as it lies in its segment

    def named(self) -> dict[str, bytes]:
        return dict(text=self.text, vector=self.vector, token_ids=self.token_ids, kv=self.kv)


def stored_bytes(store: Store, chunk_id: int) -> StoredBytes:
    """Read a live chunk's byte strings straight from the store's records."""
    env = store._env
    key = U64.pack(chunk_id)
    with env.lmdb.begin() as txn:
        record = txn.get(key, db=env.db["chunks"])
        vector = txn.get(key, db=env.db["vectors"])
        tokens = txn.get(key, db=env.db["tokens"])
    text = orjson.dumps(orjson.loads(record)["text"])[1:-1]
    assert text in record
    kv = store.read_kv(chunk_id)
    assert kv is not None, f"chunk {chunk_id} has no KV blob"
    return StoredBytes(text=text, vector=bytes(vector), token_ids=bytes(tokens), kv=kv)


def files_holding(root: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """For each named byte string found in some file under `root`, those files (relative paths)."""
    contents = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    found = {name: [path for path, data in contents.items() if needle in data] for name, needle in needles.items()}
    return {name: paths for name, paths in found.items() if paths}
