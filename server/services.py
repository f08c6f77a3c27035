"""The four gRPC servicers: thin translations between protobuf and `Runtime`, run off the event loop.

Authentication, authorisation and error-to-status mapping happen in `server.interceptor`;
a servicer only reads the caller's tenant from `current_caller()`.
"""

import functools
import time
from dataclasses import asdict
from typing import AsyncIterator, Callable

from client.api import KV_PIECE_BYTES, MAX_UNCHANGED
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
from server.convert import UpsertBatch, bounded_int, documents_from, hit_message, settings_from, settings_message, vector_from
from server.filters import filter_from
from server.ingestion import prepare
from server.interceptor import current_caller
from server.offload import Offload
from server.paging import name_after, page_size, page_token
from server.runtime import Runtime
from server.uploads import ModelKVShape, PendingBlobs, check_blobs, model_kv_shape
from store.errors import InvalidArgument, Unavailable
from store.records import KeyScope, Tenant, TenantState, TenantStats, UpsertResult
from worker.service import MODES

MAX_FETCH_IDS = 256
MAX_TTL_SECONDS = 100 * 365 * 86_400  # a key's expiry stays a 64-bit millisecond count
RIGHTS = {tenant_admin_pb2.KEY_RIGHT_READ: "read", tenant_admin_pb2.KEY_RIGHT_WRITE: "write"}
SCOPES = {
    tenant_admin_pb2.KEY_SCOPE_ADMIN: KeyScope.ADMIN,
    tenant_admin_pb2.KEY_SCOPE_TENANT: KeyScope.TENANT,
    tenant_admin_pb2.KEY_SCOPE_WORKER: KeyScope.WORKER,
}

RuntimeSource = Callable[[], Runtime | None]


class _Servicer:
    def __init__(self, runtime: RuntimeSource, offload: Offload) -> None:
        self._runtime_source = runtime
        self.offload = offload

    @property
    def runtime(self) -> Runtime:
        runtime = self._runtime_source()
        if runtime is None:
            raise Unavailable("the server is still loading its store, index and models")
        return runtime


class TenantAdminServicer(_Servicer, tenant_admin_pb2_grpc.TenantAdminServicer):
    async def CreateTenant(self, request, context):
        tenant = await self.offload.io(self.runtime.create_tenant, request.tenant_id, settings_from(request.settings))
        return tenant_admin_pb2.CreateTenantResponse(tenant=await self._tenant_message(tenant))

    async def UpdateTenant(self, request, context):
        tenant = await self.offload.io(self.runtime.update_tenant, request.tenant_id, settings_from(request.settings))
        return tenant_admin_pb2.UpdateTenantResponse(tenant=await self._tenant_message(tenant))

    async def GetTenant(self, request, context):
        tenant = await self.offload.io(self.runtime.store.get_tenant, request.tenant_id)
        return tenant_admin_pb2.GetTenantResponse(tenant=await self._tenant_message(tenant))

    async def ListTenants(self, request, context):
        """One page in name order, read with one store call; usage only when asked, since counting
        it per tenant is what made one 20,000-tenant listing take 2.4 s."""
        size, after = page_size(request.page_size), name_after(request.page_token)
        store = self.runtime.store
        if request.with_usage:
            listed = await self.offload.io(store.list_tenants_with_stats, after, size + 1)
        else:
            listed = [(t, None) for t in await self.offload.io(store.list_tenants, after, size + 1)]
        page = listed[:size]
        return tenant_admin_pb2.ListTenantsResponse(
            tenants=[tenant_message(tenant, stats) for tenant, stats in page],
            next_page_token=page_token(page[-1][0].name) if len(listed) > size else "",
        )

    async def DeleteTenant(self, request, context):
        deleted = await self.offload.io(self.runtime.delete_tenant, request.tenant_id)
        return tenant_admin_pb2.DeleteTenantResponse(deleted_chunks=deleted)

    async def CreateApiKey(self, request, context):
        scope = SCOPES.get(request.scope)
        if scope is None:
            raise InvalidArgument("scope: must be KEY_SCOPE_ADMIN, KEY_SCOPE_TENANT or KEY_SCOPE_WORKER")
        if (scope is KeyScope.TENANT) != bool(request.tenant_id):
            raise InvalidArgument("tenant_id: required for tenant keys and empty for admin and worker keys")
        if any(r not in RIGHTS for r in request.rights):
            raise InvalidArgument("rights: only KEY_RIGHT_READ and KEY_RIGHT_WRITE")
        rights = frozenset(RIGHTS[r] for r in request.rights) or frozenset(RIGHTS.values())
        ttl_s = bounded_int(request.ttl_seconds, 0, MAX_TTL_SECONDS, "ttl_seconds")
        key, token = await self.offload.io(self.runtime.store.create_api_key, scope, request.tenant_id or None, rights, ttl_s)
        return tenant_admin_pb2.CreateApiKeyResponse(key_id=key.key_id, api_key=token, expires_unix_ms=key.expires_unix_ms)

    async def RevokeApiKey(self, request, context):
        await self.offload.io(self.runtime.store.revoke_api_key, request.key_id)
        return tenant_admin_pb2.RevokeApiKeyResponse()

    async def GrantChunks(self, request, context):
        ids = await self.offload.io(
            self.runtime.indexed_store.grant, request.owner_tenant_id, list(request.external_ids), request.grantee_tenant_id
        )
        return tenant_admin_pb2.GrantChunksResponse(chunk_ids=ids.tolist())

    async def RevokeChunks(self, request, context):
        ids = await self.offload.io(
            self.runtime.indexed_store.revoke, request.owner_tenant_id, list(request.external_ids), request.grantee_tenant_id
        )
        return tenant_admin_pb2.RevokeChunksResponse(chunk_ids=ids.tolist())

    async def CompactStore(self, request, context):
        report = await self.offload.io(self.runtime.compactor.compact)
        return tenant_admin_pb2.CompactStoreResponse(bytes_before=report.bytes_before, bytes_after=report.bytes_after, seconds=report.seconds)

    async def BackupStore(self, request, context):
        report = await self.offload.io(self.runtime.backups.back_up, request.name)
        manifest = report.manifest
        return tenant_admin_pb2.BackupStoreResponse(
            path=str(report.path), files=len(manifest.files), bytes=manifest.total_bytes, tenants=manifest.tenants,
            chunks=manifest.chunks, kv_blobs=manifest.kv_blobs, schema=manifest.schema,
            created_unix_ms=manifest.created_unix_ms, seconds=report.seconds,
        )

    async def _tenant_message(self, tenant: Tenant) -> tenant_admin_pb2.Tenant:
        return tenant_message(tenant, await self.offload.io(self.runtime.store.tenant_stats, tenant.name))


def tenant_message(tenant: Tenant, stats: TenantStats | None) -> tenant_admin_pb2.Tenant:
    """The tenant as protobuf; its stats left unset when None."""
    return tenant_admin_pb2.Tenant(
        tenant_id=tenant.name,
        state=_STATES[tenant.state],
        created_unix_ms=tenant.created_unix_ms,
        stats=None if stats is None else tenant_admin_pb2.TenantStats(**asdict(stats)),
        settings=settings_message(tenant.settings),
    )


_STATES = {
    TenantState.ACTIVE: tenant_admin_pb2.TENANT_STATE_ACTIVE,
    TenantState.SUSPENDED: tenant_admin_pb2.TENANT_STATE_SUSPENDED,
    TenantState.DELETING: tenant_admin_pb2.TENANT_STATE_DELETING,
}


class IngestServicer(_Servicer, ingest_pb2_grpc.IngestServicer):
    def __init__(self, runtime: RuntimeSource, offload: Offload) -> None:
        super().__init__(runtime, offload)
        self._kv_shapes: dict[str, ModelKVShape] = {}  # by model fingerprint: read once from the workers

    async def Upsert(self, request_iterator, context):
        """A request with documents starts a batch; once the KV blobs its chunks announce have
        arrived in the requests that follow, the batch is checked, chunked, embedded and its other
        chunks' KV precomputed by the workers, then committed in one transaction.

        The caller's key is checked again at each request (a cached lookup), so a key revoked while
        its stream is open stores nothing after the revocation. A cancelled or expired call stops its
        model work at the next step and commits nothing more.
        """
        caller = current_caller()
        tenant = caller.tenant
        documents = chunks = batches = 0
        batch: UpsertBatch | None = None
        pending: PendingBlobs | None = None
        async for request in request_iterator:
            runtime = self.runtime
            runtime.store.authenticate(caller.token)
            if request.documents or not request.kv_pieces:
                if pending is not None:
                    raise InvalidArgument(f"documents: a batch began before the last one's KV was complete: {pending.missing()}")
                config = runtime.config
                batch = documents_from(request, runtime.store.dim, config.max_documents_per_batch, config.max_text_bytes)
                pending = PendingBlobs(batch.claims, [d.external_id for d in batch.documents], config.max_upload_kv_bytes)
            elif pending is None:
                raise InvalidArgument("kv_pieces: no batch announced KV; a request with documents comes first")
            for piece in request.kv_pieces:
                pending.add(piece)
            if pending.complete:
                result = await self._store_batch(tenant, batch, pending.blobs())
                documents += result.documents
                chunks += len(result.added)
                batches += 1
                batch = pending = None
        if pending is not None:
            raise InvalidArgument(f"kv_pieces: the stream ended before the batch's KV was complete: {pending.missing()}")
        return ingest_pb2.UpsertResponse(documents=documents, chunks=chunks, batches=batches)

    async def _store_batch(self, tenant: str, batch: UpsertBatch, blobs: dict[tuple[int, int], bytes]) -> UpsertResult:
        """Uploaded blobs are checked and stored only under a policy that stores KV at ingestion
        (eager); under the others they are ignored, as the tenant's UploadSpec says."""
        runtime = self.runtime
        if blobs and await self.offload.io(runtime.kv_policy, tenant) != "eager":
            blobs = {}
        if blobs:
            fingerprint = runtime.router.kv_fingerprint
            if fingerprint not in self._kv_shapes:
                self._kv_shapes[fingerprint] = await model_kv_shape(runtime.router)
            codec = await self.offload.io(runtime.kv_codec, tenant)
            await self.offload.io(check_blobs, batch.claims, blobs, self._kv_shapes[fingerprint], fingerprint, codec)
        prepared = await prepare(runtime, self.offload, tenant, batch, blobs)
        return await self.offload.io(runtime.commit, tenant, prepared)

    async def UploadSpec(self, request, context):
        runtime = self.runtime
        tenant = current_caller().tenant
        policy = await self.offload.io(runtime.kv_policy, tenant)
        return ingest_pb2.UploadSpecResponse(
            kv_fingerprint=runtime.router.kv_fingerprint, kv_codec=await self.offload.io(runtime.kv_codec, tenant),
            stores_kv=policy == "eager", chunk_tokens=runtime.config.chunk_tokens,
        )

    async def Delete(self, request, context):
        if not request.external_ids:
            raise InvalidArgument("external_ids: name at least one document")
        deleted = await self.offload.io(self.runtime.indexed_store.delete_documents, current_caller().tenant, list(request.external_ids))
        return ingest_pb2.DeleteResponse(deleted_chunks=deleted)

    async def Unchanged(self, request, context):
        if len(request.external_ids) != len(request.content_hashes):
            raise InvalidArgument(
                f"content_hashes: {len(request.content_hashes)} given for {len(request.external_ids)} external_ids; one each"
            )
        bounded_int(len(request.external_ids), 0, MAX_UNCHANGED, "external_ids")
        pairs = list(zip(request.external_ids, request.content_hashes))
        unchanged = await self.offload.io(self.runtime.store.unchanged, current_caller().tenant, pairs)
        return ingest_pb2.UnchangedResponse(external_ids=unchanged)


class RetrievalServicer(_Servicer, retrieval_pb2_grpc.RetrievalServicer):
    async def Search(self, request, context):
        tenant = current_caller().tenant
        k = bounded_int(request.k, 1, self.runtime.config.max_k, "k")
        where = filter_from(request.filter) if request.HasField("filter") else None
        started = time.perf_counter()
        query = await self._query_vector(request)
        search = functools.partial(self.runtime.indexed_store.search, tenant, query, k, with_tokens=False, where=where)
        hits = search(wait=False)
        if hits is None:
            hits = await self.offload.io(search)
        return retrieval_pb2.SearchResponse(
            hits=[hit_message(h) for h in hits], search_ms=(time.perf_counter() - started) * 1e3
        )

    async def RetrieveAndGenerate(self, request, context) -> AsyncIterator[retrieval_pb2.RetrieveAndGenerateResponse]:
        tenant = current_caller().tenant
        runtime = self.runtime
        config = runtime.config
        mode = MODES.get(request.mode or retrieval_pb2.GENERATION_MODE_BLEND)
        if mode is None:
            raise InvalidArgument(f"mode: unknown generation mode {request.mode}")
        k = bounded_int(request.k or config.rag_default_k, 1, config.rag_max_k, "k")
        max_new = bounded_int(
            request.max_new_tokens or config.default_max_new_tokens, 1, config.max_new_tokens_limit, "max_new_tokens"
        )
        where = filter_from(request.filter) if request.HasField("filter") else None
        started = time.perf_counter()
        query = await self.offload.model(runtime.embed_query, request.question, "question")
        hits = await self.offload.io(functools.partial(runtime.indexed_store.search, tenant, query, k, where=where))
        retrieval_ms = (time.perf_counter() - started) * 1e3
        job, capability = runtime.generate_job(tenant, hits, request.question, mode, max_new)
        # the worker checks the prompt against the model's context before the first message leaves
        generation = await runtime.router.generate(job, capability)
        tokens = generation.tokens
        first_token_ms = 0.0
        generated = 0
        try:
            yield retrieval_pb2.RetrieveAndGenerateResponse(chunks=retrieval_pb2.ChunksUsed(hits=[hit_message(h) for h in hits]))
            async for token in tokens:
                if generated == 0:
                    first_token_ms = (time.perf_counter() - started) * 1e3
                    decode_started = time.perf_counter()
                generated += 1
                yield retrieval_pb2.RetrieveAndGenerateResponse(
                    token=retrieval_pb2.TokenDelta(token_id=token.token_id, text=token.text)
                )
                if runtime.stopping.is_set():
                    raise Unavailable("the server is shutting down; ask again")
        finally:
            await tokens.aclose()
        total_ms = (time.perf_counter() - started) * 1e3
        decode_s = time.perf_counter() - decode_started if generated > 1 else 0.0
        yield retrieval_pb2.RetrieveAndGenerateResponse(
            stats=retrieval_pb2.GenerationStats(
                retrieval_ms=retrieval_ms,
                time_to_first_token_ms=first_token_ms,
                prompt_tokens=generation.prompt_tokens,
                tokens_generated=generated,
                tokens_per_s=(generated - 1) / decode_s if decode_s > 0 else 0.0,
                total_ms=total_ms,
                mode=request.mode or retrieval_pb2.GENERATION_MODE_BLEND,
            )
        )

    async def _query_vector(self, request):
        if bool(request.query_text) == bool(request.query_vector):
            raise InvalidArgument("query: give exactly one of query_text and query_vector")
        if request.query_vector:
            return vector_from(request.query_vector, self.runtime.store.dim, "query_vector")
        return await self.offload.model(self.runtime.embed_query, request.query_text)


class KVCacheServicer(_Servicer, kv_cache_pb2_grpc.KVCacheServicer):
    async def Fetch(self, request, context) -> AsyncIterator[kv_cache_pb2.FetchResponse]:
        """Each blob in pieces of at most 3 MiB, so messages stay under the 4 MiB limit.

        A tenant key reads the chunks its tenant may read; a worker key only those the router's
        capability names (the router authorised them for one request).
        """
        caller = current_caller()
        ids = list(request.chunk_ids)
        if not 1 <= len(ids) <= MAX_FETCH_IDS:
            raise InvalidArgument(f"chunk_ids: give 1 to {MAX_FETCH_IDS} ids, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("chunk_ids: name each chunk once")
        if caller.key.scope is KeyScope.WORKER:
            self.runtime.capabilities.check(request.capability, ids)
        else:
            ids = await self.offload.io(self.runtime.kv_chunk_ids, caller.tenant, ids)
        for chunk_id in ids:
            found = await self.offload.io(self.runtime.read_kv, chunk_id)
            if found is None:  # no KV, or deleted since
                continue
            codec, blob = found
            for offset in range(0, len(blob), KV_PIECE_BYTES):
                piece = blob[offset : offset + KV_PIECE_BYTES]
                yield kv_cache_pb2.FetchResponse(
                    chunk_id=chunk_id,
                    codec=codec,
                    total_bytes=len(blob),
                    offset=offset,
                    data=piece,
                    last=offset + len(piece) == len(blob),
                )
