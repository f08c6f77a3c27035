"""Checks of what callers hand the store, before any transaction: InvalidArgument naming the field."""

import math
import re
import unicodedata

import numpy as np

from store.env import dumps
from store.errors import InvalidArgument
from store.records import KV_POLICIES, DocumentInput, KeyScope, TenantSettings
from store.vectors import unit_rows

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_EXTERNAL_ID_BYTES = 256  # LMDB keys are at most 511 bytes
MAX_METADATA_BYTES = 16 << 10
MAX_CONTENT_HASH_BYTES = 128
RIGHTS = frozenset({"read", "write"})


def check_tenant_name(name: str, field: str = "tenant_id") -> str:
    if not isinstance(name, str) or not TENANT_NAME.fullmatch(name):
        raise InvalidArgument(f"{field}: {name!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return name


def check_settings(settings: TenantSettings) -> None:
    for field in ("max_chunks", "max_kv_bytes", "kv_admit_after"):
        value = getattr(settings, field)
        if not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"settings.{field}: must be a non-negative integer (0: unlimited), got {value!r}")
    rate = settings.requests_per_second
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
        raise InvalidArgument(f"settings.requests_per_second: must be finite and non-negative (0: unlimited), got {rate!r}")
    if settings.kv_policy and settings.kv_policy not in KV_POLICIES:
        raise InvalidArgument(f"settings.kv_policy: unknown {settings.kv_policy!r}; known: {list(KV_POLICIES)} or empty for the default")
    if settings.kv_share_group and not TENANT_NAME.fullmatch(settings.kv_share_group):
        raise InvalidArgument(f"settings.kv_share_group: {settings.kv_share_group!r} must match [a-z0-9][a-z0-9_-]{{0,62}} or be empty")


def check_external_id(external_id: str, field: str = "external_id") -> str:
    """Any text of 1 to 256 UTF-8 bytes without control characters or surrounding whitespace."""
    valid = (
        isinstance(external_id, str)
        and 0 < len(external_id.encode("utf-8", "surrogatepass")) <= MAX_EXTERNAL_ID_BYTES
        and external_id == external_id.strip()
        and not any(unicodedata.category(ch).startswith("C") for ch in external_id)
    )
    if not valid:
        raise InvalidArgument(
            f"{field}: {external_id[:64]!r} must be 1 to {MAX_EXTERNAL_ID_BYTES} bytes of UTF-8 text, "
            "without control characters or surrounding spaces"
        )
    return external_id


def check_key_request(scope: KeyScope, tenant: str | None, rights: frozenset[str], ttl_s: int) -> None:
    if not isinstance(ttl_s, int) or ttl_s < 0:
        raise InvalidArgument(f"ttl_seconds: must be a non-negative integer (0: never expires), got {ttl_s!r}")
    if not rights or not rights <= RIGHTS:
        raise InvalidArgument(f"rights: a non-empty subset of {sorted(RIGHTS)}")
    if (scope is KeyScope.TENANT) != (tenant is not None):
        raise InvalidArgument("tenant_id: required for tenant keys and absent for admin keys")


def check_documents(documents: list[DocumentInput], dim: int) -> np.ndarray:
    """Check an upsert batch; returns its chunks' vectors scaled to unit norm (float32 [chunks, dim])."""
    if not documents:
        raise InvalidArgument("documents: a batch needs at least one document")
    seen = set()
    vectors, fields = [], []
    for i, doc in enumerate(documents):
        check_external_id(doc.external_id, f"documents[{i}].external_id")
        if doc.external_id in seen:
            raise InvalidArgument(f"documents[{i}].external_id: {doc.external_id!r} appears twice in one batch")
        seen.add(doc.external_id)
        if not isinstance(doc.metadata, dict):
            raise InvalidArgument(f"documents[{i}].metadata: must be a JSON object")
        if len(dumps(doc.metadata)) > MAX_METADATA_BYTES:
            raise InvalidArgument(f"documents[{i}].metadata: more than {MAX_METADATA_BYTES} bytes as JSON")
        if not isinstance(doc.content_hash, str) or len(doc.content_hash.encode()) > MAX_CONTENT_HASH_BYTES:
            raise InvalidArgument(f"documents[{i}].content_hash: text of at most {MAX_CONTENT_HASH_BYTES} bytes")
        if not doc.chunks:
            raise InvalidArgument(f"documents[{i}].chunks: a document needs at least one chunk")
        for j, chunk in enumerate(doc.chunks):
            field = f"documents[{i}].chunks[{j}]"
            vector = chunk.vector
            if not isinstance(vector, np.ndarray) or vector.dtype != np.float32 or vector.shape != (dim,):
                raise InvalidArgument(f"{field}.vector: must be float32 [{dim}]")
            vectors.append(vector)
            fields.append(f"{field}.vector")
            if not isinstance(chunk.token_ids, np.ndarray) or chunk.token_ids.ndim != 1:
                raise InvalidArgument(f"{field}.token_ids: must be a 1-d integer array")
    return unit_rows(np.stack(vectors), fields)
