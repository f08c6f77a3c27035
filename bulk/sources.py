"""Input documents for a bulk job: JSONL and Parquet files, or directories of them, as one Ray dataset.

A record is `{"id", "text", "metadata"?}`. Every row that leaves here has four string columns:
`id`, `text`, `metadata` (canonical JSON) and `content_hash`, the sha256 of text and metadata
that the store keeps with the document so a re-run can skip it when unchanged.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import ray.data

from store.errors import InvalidArgument

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


def input_files(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(JSONL files, Parquet files) named by `paths`, a directory standing for the files under it."""
    jsonl: list[Path] = []
    parquet: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InvalidArgument(f"input: {path} does not exist")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.suffix in JSONL_SUFFIXES:
                jsonl.append(file)
            elif file.suffix in PARQUET_SUFFIXES:
                parquet.append(file)
            elif not path.is_dir():
                raise InvalidArgument(f"input: {file} is neither JSONL ({', '.join(JSONL_SUFFIXES)}) nor Parquet")
    if not jsonl and not parquet:
        raise InvalidArgument(f"input: no JSONL or Parquet files in {', '.join(map(str, paths))}")
    return jsonl, parquet


def content_hash(text: str, metadata: str) -> str:
    """sha256 of the text and the canonical JSON of its metadata: what makes a document changed."""
    return hashlib.sha256(text.encode() + b"\0" + metadata.encode()).hexdigest()


def read_documents(paths: list[Path]) -> ray.data.Dataset:
    """One row a document, read lazily by Ray (a JSONL file is read as lines, so records with
    differently shaped metadata never meet in one Arrow schema)."""
    jsonl, parquet = input_files(paths)
    parts = []
    if jsonl:
        parts.append(ray.data.read_text([str(p) for p in jsonl]).map_batches(_from_lines, batch_format="numpy"))
    if parquet:
        parts.append(ray.data.read_parquet([str(p) for p in parquet]).map_batches(_from_records, batch_format="pandas"))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _from_lines(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    records = []
    for line in batch["text"]:
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise InvalidArgument(f"input: a line is not JSON ({exc}): {line[:80]!r}") from exc
    return document_columns(records)


def _from_records(frame) -> dict[str, np.ndarray]:
    return document_columns(frame.to_dict("records"))


def document_columns(records: list[dict]) -> dict[str, np.ndarray]:
    """Records as the job's batch columns (id, text, metadata, content_hash); InvalidArgument names a bad one."""
    ids, texts, metadata, hashes = [], [], [], []
    for record in records:
        external_id, text, meta = record.get("id"), record.get("text"), record.get("metadata")
        if external_id is None or not isinstance(text, str) or not text.strip():
            raise InvalidArgument(f"input: a record needs an id and a non-empty text, got keys {sorted(record)} (id {external_id!r})")
        if isinstance(meta, str):  # Parquet files often keep metadata as a JSON string
            meta = json.loads(meta) if meta else {}
        canonical = json.dumps(meta or {}, sort_keys=True, separators=(",", ":"), default=_plain)
        ids.append(str(external_id))
        texts.append(text)
        metadata.append(canonical)
        hashes.append(content_hash(text, canonical))
    columns = {"id": ids, "text": texts, "metadata": metadata, "content_hash": hashes}
    return {name: np.array(values, dtype=object) for name, values in columns.items()}


def _plain(value):
    """Parquet structs and lists come back as numpy values; JSON wants plain ones."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"metadata: {type(value).__name__} is not JSON")
