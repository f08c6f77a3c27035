"""Authentication, authorisation and error mapping for every tenantkv RPC, in one server interceptor.

A request's tenant comes from its API key (`authorization: Bearer <key>`), never from the request
body. Handlers read the authenticated caller with `current_caller()`. Health and reflection are
open; every other service names the key scope and right it needs in `ACCESS`.
"""

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from store.errors import PermissionDenied, TenantKVError, Unauthenticated
from store.records import ApiKey, KeyScope
from server.status import status_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Access:
    scope: KeyScope
    right: str | None  # "read" or "write" for tenant keys


ACCESS: dict[str, Access] = {
    "tenantkv.v1.TenantAdmin": Access(KeyScope.ADMIN, None),
    "tenantkv.v1.Ingest": Access(KeyScope.TENANT, "write"),
    "tenantkv.v1.Retrieval": Access(KeyScope.TENANT, "read"),
    "tenantkv.v1.KVCache": Access(KeyScope.TENANT, "read"),
}


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKey
    request_id: str

    @property
    def tenant(self) -> str:
        """The caller's tenant; only tenant-scoped keys reach data-plane handlers."""
        if self.key.tenant is None:
            raise PermissionDenied("this call needs a tenant key")
        return self.key.tenant


_caller: ContextVar[Caller | None] = ContextVar("tenantkv_caller", default=None)


def current_caller() -> Caller:
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("no authenticated caller")
    return caller


class RequestContextFilter(logging.Filter):
    """Adds `request_id` and `tenant` to every log record emitted while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        caller = _caller.get()
        record.request_id = caller.request_id if caller else "-"
        record.tenant = (caller.key.tenant or "admin") if caller else "-"
        return True


Authenticator = Callable[[str], ApiKey]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticate: Authenticator) -> None:
        self._authenticate = authenticate

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service = details.method.lstrip("/").split("/")[0]
        access = ACCESS.get(service)
        if handler is None or access is None:
            return handler
        return _wrap(handler, lambda context: self._authorize(context, access))

    async def _authorize(self, context: grpc.aio.ServicerContext, access: Access) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex[:16]
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        key = await asyncio.to_thread(self._authenticate, token.strip())
        if key.scope is not access.scope:
            raise PermissionDenied(f"this call needs a key of scope {access.scope.name.lower()}")
        if access.right is not None and access.right not in key.rights:
            raise PermissionDenied(f"this key lacks the {access.right!r} right")
        return Caller(key=key, request_id=request_id)


Authorize = Callable[[grpc.aio.ServicerContext], Awaitable[Caller]]


def _wrap(handler: grpc.RpcMethodHandler, authorize: Authorize) -> grpc.RpcMethodHandler:
    """The same handler, with authorisation before the behaviour and errors mapped to status codes."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, authorize), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, authorize), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, authorize), **codec)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, authorize), **codec)


def _unary(behavior: Callable[..., Awaitable[Any]], authorize: Authorize) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _call_scope(context, authorize):
            return await behavior(request, context)

    return handle


def _streaming(behavior: Callable[..., AsyncIterator[Any]], authorize: Authorize) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _call_scope(context, authorize):
            async for response in behavior(request, context):
                yield response

    return handle


@asynccontextmanager
async def _call_scope(context: grpc.aio.ServicerContext, authorize: Authorize) -> AsyncIterator[None]:
    """Authorise, expose the caller to the handler, and turn any failure into a status."""
    token = None
    try:
        token = _caller.set(await authorize(context))
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # every failure becomes a status; unexpected ones are logged
        await _abort(context, exc)
    finally:
        if token is not None:
            _caller.reset(token)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code, message = status_for(exc)
    if isinstance(exc, TenantKVError):
        log.info("%s: %s", code.name, message)
    await context.abort(code, message)
