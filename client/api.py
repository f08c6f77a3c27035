"""A Python client for tenantkv, used by the CLI and the tests. Calls raise grpc.RpcError on failure."""

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
from google.protobuf import struct_pb2

from client.tls import ClientTLS, secure_or_plain
from client.where import parse_where
from protos.tenantkv.v1 import (
    ingest_pb2,
    ingest_pb2_grpc,
    kv_cache_pb2,
    kv_cache_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tenant_admin_pb2,
    tenant_admin_pb2_grpc,
)

MAX_MESSAGE_BYTES = 4 << 20
KV_PIECE_BYTES = 3 << 20  # a KV blob travels in pieces of at most this, one message each (uploads, fetches, worker replies)
MAX_UNCHANGED = 4096  # documents an Unchanged request may name (the server's bound)


@dataclass(frozen=True, slots=True)
class DocumentText:
    """A document for `Client.upsert`: either `text` (the server chunks it) or `chunks` (optionally with vectors)."""

    external_id: str
    text: str = ""
    chunks: Sequence[str] = ()
    vectors: Sequence[np.ndarray] | None = None
    metadata: dict = field(default_factory=dict)

    def message(self) -> ingest_pb2.Document:
        metadata = struct_pb2.Struct()
        metadata.update(self.metadata)
        vectors = self.vectors if self.vectors is not None else [None] * len(self.chunks)
        chunks = [
            ingest_pb2.ChunkInput(text=text, vector=[] if vector is None else np.asarray(vector, np.float32).tolist())
            for text, vector in zip(self.chunks, vectors)
        ]
        return ingest_pb2.Document(external_id=self.external_id, text=self.text, chunks=chunks, metadata=metadata)

    def piece_requests(self) -> Iterator[ingest_pb2.UpsertRequest]:
        """Nothing: the server computes this document's KV itself."""
        return iter(())


@dataclass(frozen=True, slots=True)
class ChunkUpload:
    """A chunk cut, embedded and (optionally) KV-encoded by the caller, as the server would have.

    `token_ids` must equal what the server's chunker and tokenizer produce for `text`; `kv_blob`,
    when given, is the chunk's KV after the prompt prefix as the server's model computes it,
    encoded with `kvcodec.encode(kv, codec, fingerprint=Engine.kv_fingerprint)` in the tenant's
    codec (`Client.upload_spec` names both, and whether the tenant's policy keeps uploaded KV).
    The server checks the header, shape, token count and fingerprint, recomputes a sample of
    uploads, and takes at most 256 MiB of blobs a batch (about 40 fp16 chunks of 256 tokens).
    """

    text: str
    vector: np.ndarray  # float32 [dim]
    token_ids: Sequence[int] | np.ndarray
    kv_blob: bytes | None = None


@dataclass(frozen=True, slots=True)
class DocumentUpload:
    """A document for `Client.upsert` whose chunks the caller prepared (the bulk-ingest path).

    `content_hash` (at most 128 bytes, the caller's) is kept with the document, so a re-run can ask
    `Client.unchanged` which documents are already stored unchanged and skip them.
    """

    external_id: str
    chunks: Sequence[ChunkUpload]
    metadata: dict = field(default_factory=dict)
    content_hash: str = ""

    def message(self) -> ingest_pb2.Document:
        metadata = struct_pb2.Struct()
        metadata.update(self.metadata)
        chunks = [
            ingest_pb2.ChunkInput(
                text=c.text,
                vector=np.asarray(c.vector, np.float32).tolist(),
                token_ids=np.asarray(c.token_ids, np.int64).tolist(),
                kv_size=0 if c.kv_blob is None else len(c.kv_blob),
            )
            for c in self.chunks
        ]
        return ingest_pb2.Document(external_id=self.external_id, chunks=chunks, metadata=metadata, content_hash=self.content_hash)

    def piece_requests(self) -> Iterator[ingest_pb2.UpsertRequest]:
        """Each uploaded blob in pieces of at most KV_PIECE_BYTES, in order of offset, one request a piece
        (built in place: a blob of one piece is not copied before serialisation)."""
        for index, chunk in enumerate(self.chunks):
            blob = chunk.kv_blob
            for offset in range(0, 0 if blob is None else len(blob), KV_PIECE_BYTES):
                request = ingest_pb2.UpsertRequest()
                request.kv_pieces.add(external_id=self.external_id, chunk=index, offset=offset, data=blob[offset : offset + KV_PIECE_BYTES])
                yield request


def upsert_requests(batches: Iterable[Sequence["DocumentText | DocumentUpload"]]) -> Iterator[ingest_pb2.UpsertRequest]:
    """Each batch as one request with its documents, then one request per piece of its uploaded blobs."""
    for batch in batches:
        yield ingest_pb2.UpsertRequest(documents=[d.message() for d in batch])
        for document in batch:
            yield from document.piece_requests()


def bearer(api_key: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents `api_key`."""
    return (("authorization", f"Bearer {api_key}"),)


Where = str | retrieval_pb2.Filter | None  # `--where` text (`client.where`), a filter message, or no filter


def filter_message(where: Where) -> retrieval_pb2.Filter | None:
    return parse_where(where) if isinstance(where, str) else where


def search_request(query: str | np.ndarray, k: int, where: Where = None) -> retrieval_pb2.SearchRequest:
    """A Search for a text (embedded by the server) or a vector, only among chunks `where` admits."""
    if isinstance(query, str):
        return retrieval_pb2.SearchRequest(query_text=query, k=k, filter=filter_message(where))
    return retrieval_pb2.SearchRequest(query_vector=np.asarray(query, np.float32).tolist(), k=k, filter=filter_message(where))


class Client:
    """`tls`: verify the server against a CA bundle (and present a client certificate); None: plaintext."""

    def __init__(self, target: str, api_key: str, timeout_s: float = 600.0, tls: ClientTLS | None = None) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._channel = secure_or_plain(target, tls, options)
        self._metadata = bearer(api_key)
        self._timeout = timeout_s
        self.admin = tenant_admin_pb2_grpc.TenantAdminStub(self._channel)
        self.ingest = ingest_pb2_grpc.IngestStub(self._channel)
        self.retrieval = retrieval_pb2_grpc.RetrievalStub(self._channel)
        self.kv = kv_cache_pb2_grpc.KVCacheStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        return method(request, metadata=self._metadata, timeout=self._timeout)

    # ---- admin

    def create_tenant(self, tenant_id: str, settings: tenant_admin_pb2.TenantSettings | None = None) -> tenant_admin_pb2.Tenant:
        request = tenant_admin_pb2.CreateTenantRequest(tenant_id=tenant_id, settings=settings)
        return self._call(self.admin.CreateTenant, request).tenant

    def update_tenant(self, tenant_id: str, settings: tenant_admin_pb2.TenantSettings) -> tenant_admin_pb2.Tenant:
        request = tenant_admin_pb2.UpdateTenantRequest(tenant_id=tenant_id, settings=settings)
        return self._call(self.admin.UpdateTenant, request).tenant

    def get_tenant(self, tenant_id: str) -> tenant_admin_pb2.Tenant:
        return self._call(self.admin.GetTenant, tenant_admin_pb2.GetTenantRequest(tenant_id=tenant_id)).tenant

    def compact_store(self) -> tenant_admin_pb2.CompactStoreResponse:
        """Rewrite the store's files with live data only (admin key)."""
        return self._call(self.admin.CompactStore, tenant_admin_pb2.CompactStoreRequest())

    def backup_store(self, name: str) -> tenant_admin_pb2.BackupStoreResponse:
        """A consistent backup, taken while the server serves, as `name` under its backup root (admin key)."""
        return self._call(self.admin.BackupStore, tenant_admin_pb2.BackupStoreRequest(name=name))

    def list_tenants_page(self, page_size: int = 0, page_token: str = "", with_usage: bool = False) -> tenant_admin_pb2.ListTenantsResponse:
        """One page of tenants in name order (page_size 0: the server's default); its
        next_page_token asks for the next, and is empty after the last page."""
        request = tenant_admin_pb2.ListTenantsRequest(page_size=page_size, page_token=page_token, with_usage=with_usage)
        return self._call(self.admin.ListTenants, request)

    def list_tenants(self, with_usage: bool = False, page_size: int = 0) -> list[tenant_admin_pb2.Tenant]:
        """Every tenant in name order, fetched a page at a time; stats filled only `with_usage`."""
        tenants: list[tenant_admin_pb2.Tenant] = []
        token = ""
        while True:
            reply = self.list_tenants_page(page_size, token, with_usage)
            tenants.extend(reply.tenants)
            token = reply.next_page_token
            if not token:
                return tenants

    def delete_tenant(self, tenant_id: str) -> int:
        return self._call(self.admin.DeleteTenant, tenant_admin_pb2.DeleteTenantRequest(tenant_id=tenant_id)).deleted_chunks

    def create_api_key(
        self, tenant_id: str = "", rights: Sequence[str] = (), ttl_s: int = 0, worker: bool = False
    ) -> tenant_admin_pb2.CreateApiKeyResponse:
        """A tenant key for `tenant_id` (read and write unless `rights` says), a worker key if `worker`,
        else an admin key; it expires after `ttl_s` seconds (0: never)."""
        if tenant_id:
            scope = tenant_admin_pb2.KEY_SCOPE_TENANT
        else:
            scope = tenant_admin_pb2.KEY_SCOPE_WORKER if worker else tenant_admin_pb2.KEY_SCOPE_ADMIN
        codes = [tenant_admin_pb2.KeyRight.Value(f"KEY_RIGHT_{r.upper()}") for r in rights]
        request = tenant_admin_pb2.CreateApiKeyRequest(scope=scope, tenant_id=tenant_id, rights=codes, ttl_seconds=ttl_s)
        return self._call(self.admin.CreateApiKey, request)

    def revoke_api_key(self, key_id: str) -> None:
        self._call(self.admin.RevokeApiKey, tenant_admin_pb2.RevokeApiKeyRequest(key_id=key_id))

    def grant(self, owner: str, external_ids: Sequence[str], grantee: str) -> list[int]:
        request = tenant_admin_pb2.GrantChunksRequest(owner_tenant_id=owner, external_ids=external_ids, grantee_tenant_id=grantee)
        return list(self._call(self.admin.GrantChunks, request).chunk_ids)

    def revoke(self, owner: str, external_ids: Sequence[str], grantee: str) -> list[int]:
        request = tenant_admin_pb2.RevokeChunksRequest(owner_tenant_id=owner, external_ids=external_ids, grantee_tenant_id=grantee)
        return list(self._call(self.admin.RevokeChunks, request).chunk_ids)

    # ---- data plane (the tenant comes from the key)

    def upsert(self, batches: Iterable[Sequence[DocumentText | DocumentUpload]]) -> ingest_pb2.UpsertResponse:
        """Stream batches; each is committed in one transaction. Returns once all are durable.

        A batch may mix `DocumentText` (the server chunks, embeds and computes KV) and
        `DocumentUpload` (the caller's chunks, vectors, token ids and KV blobs, which follow their
        batch in pieces). A refused batch raises INVALID_ARGUMENT naming documents[i].chunks[j] and
        the field, and nothing of it is stored; batches before it stay stored.
        """
        return self.ingest.Upsert(upsert_requests(batches), metadata=self._metadata, timeout=self._timeout)

    def unchanged(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """The external ids among (external id, content hash) `pairs` stored with that same hash
        (read right), asked MAX_UNCHANGED at a time."""
        unchanged: list[str] = []
        for start in range(0, len(pairs), MAX_UNCHANGED):
            part = pairs[start : start + MAX_UNCHANGED]
            request = ingest_pb2.UnchangedRequest(external_ids=[e for e, _ in part], content_hashes=[h for _, h in part])
            unchanged.extend(self._call(self.ingest.Unchanged, request).external_ids)
        return unchanged

    def upload_spec(self) -> ingest_pb2.UploadSpecResponse:
        """What chunks uploaded to this key's tenant must match (write right): the model KV
        fingerprint, the tenant's codec, whether its policy stores uploaded KV, the chunker's size."""
        return self._call(self.ingest.UploadSpec, ingest_pb2.UploadSpecRequest())

    def delete(self, external_ids: Sequence[str]) -> int:
        return self._call(self.ingest.Delete, ingest_pb2.DeleteRequest(external_ids=external_ids)).deleted_chunks

    def search(self, query: str | np.ndarray, k: int = 5, where: Where = None) -> retrieval_pb2.SearchResponse:
        return self._call(self.retrieval.Search, search_request(query, k, where))

    def ask(
        self, question: str, k: int = 0, max_new_tokens: int = 0, mode: str = "", where: Where = None
    ) -> Iterator[retrieval_pb2.RetrieveAndGenerateResponse]:
        """Stream: the chunks used, then tokens, then the timings. `mode`: full_prefill, full_reuse or blend;
        `where`: retrieve only chunks whose document metadata satisfies it."""
        code = retrieval_pb2.GenerationMode.Value(f"GENERATION_MODE_{mode.upper()}") if mode else 0
        request = retrieval_pb2.RetrieveAndGenerateRequest(
            question=question, k=k, max_new_tokens=max_new_tokens, mode=code, filter=filter_message(where)
        )
        return self.retrieval.RetrieveAndGenerate(request, metadata=self._metadata, timeout=self._timeout)

    def fetch_kv(self, chunk_ids: Sequence[int], capability: str = "") -> dict[int, tuple[str, bytes]]:
        """Each chunk's (codec, encoded KV blob), reassembled from the streamed pieces. A worker key
        passes the `capability` the router gave it for these chunks."""
        pieces: dict[int, list[bytes]] = {}
        codecs: dict[int, str] = {}
        request = kv_cache_pb2.FetchRequest(chunk_ids=chunk_ids, capability=capability)
        for piece in self.kv.Fetch(request, metadata=self._metadata, timeout=self._timeout):
            pieces.setdefault(piece.chunk_id, []).append(piece.data)
            codecs[piece.chunk_id] = piece.codec
        return {chunk_id: (codecs[chunk_id], b"".join(parts)) for chunk_id, parts in pieces.items()}
