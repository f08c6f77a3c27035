"""Authentication, authorisation, error mapping and metrics for every tenantkv RPC, in one server interceptor.

A request's tenant comes from its API key (`authorization: Bearer <key>`), never from the request
body. Handlers read the authenticated caller with `current_caller()`. Health and reflection are
open; every other service names the key scope and right it needs in `ACCESS`.
"""

import asyncio
import logging
import secrets
import time
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from store.errors import PermissionDenied, TenantKVError, Unauthenticated
from store.records import ApiKey, KeyScope
from server.metrics import Metrics
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
    def __init__(self, authenticate: Authenticator, metrics: Metrics) -> None:
        self._authenticate = authenticate
        self._metrics = metrics
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # each method's, wrapped on its first call

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = self._handlers.get(details.method)
        if handler is None:
            handler = await continuation(details)
            if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
                return None
            access = ACCESS.get(details.method.lstrip("/").split("/")[0])
            if access is not None:
                scope = _CallScope(details.method, lambda context: self._authorize(context, access), self._metrics)
                handler = _wrap(handler, scope)
            self._handlers[details.method] = handler
        return handler

    async def _authorize(self, context: grpc.aio.ServicerContext, access: Access) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get("x-request-id") or secrets.token_hex(8)
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        key = self._authenticate(token.strip())  # a hash and one LMDB read: cheaper here than a thread hop
        if key.scope is not access.scope:
            raise PermissionDenied(f"this call needs a key of scope {access.scope.name.lower()}")
        if access.right is not None and access.right not in key.rights:
            raise PermissionDenied(f"this key lacks the {access.right!r} right")
        return Caller(key=key, request_id=request_id)


Authorize = Callable[[grpc.aio.ServicerContext], Awaitable[Caller]]


@dataclass(frozen=True, slots=True)
class _CallScope:
    """What surrounds one method's handler: authorisation first, status mapping and metrics at the end."""

    method: str
    authorize: Authorize
    metrics: Metrics

    @asynccontextmanager
    async def enter(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Each call is counted before its status leaves: a client that has its answer can read its metric."""
        started = time.perf_counter()
        token, tenant = None, None
        try:
            caller = await self.authorize(context)
            tenant = caller.key.tenant or "admin"
            token = _caller.set(caller)
            yield
        except grpc.aio.AbortError:  # the handler set its status itself
            self.metrics.observe(self.method, context.code() or grpc.StatusCode.UNKNOWN, tenant, started)
            raise
        except asyncio.CancelledError:  # the client went away
            self.metrics.observe(self.method, grpc.StatusCode.CANCELLED, tenant, started)
            raise
        except Exception as exc:  # every failure becomes a status; unexpected ones are logged
            code, message = status_for(exc)
            if isinstance(exc, TenantKVError):
                log.info("%s: %s", code.name, message)
            self.metrics.observe(self.method, code, tenant, started)
            await context.abort(code, message)
        else:
            self.metrics.observe(self.method, grpc.StatusCode.OK, tenant, started)
        finally:
            if token is not None:
                _caller.reset(token)


def _wrap(handler: grpc.RpcMethodHandler, scope: _CallScope) -> grpc.RpcMethodHandler:
    """The same handler, with authorisation before the behaviour and errors mapped to status codes."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, scope), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, scope), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, scope), **codec)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, scope), **codec)


def _unary(behavior: Callable[..., Awaitable[Any]], scope: _CallScope) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with scope.enter(context):
            return await behavior(request, context)

    return handle


def _streaming(behavior: Callable[..., AsyncIterator[Any]], scope: _CallScope) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with scope.enter(context):
            async for response in behavior(request, context):
                yield response

    return handle
