"""Authentication, authorisation, request parsing, error mapping and metrics for every RPC, in one server interceptor.

A request's tenant comes from its API key (`authorization: Bearer <key>`), never from the request
body. Handlers read the authenticated caller with `current_caller()`. Health and reflection are
open; every other service names the key scope and right it needs in `ACCESS`.

Request bytes that do not parse never reach a handler as an exception: gRPC would answer UNKNOWN
with the parser's text and log a trace per call. Each method's deserializer instead returns a
`Malformed` marker, which the wrapped handler answers INVALID_ARGUMENT after authorisation, so a
caller without a key learns nothing about parsing.
"""

import asyncio
import functools
import logging
import secrets
import time
from contextlib import aclosing, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from store.errors import InvalidArgument, PermissionDenied, Unauthenticated
from store.records import ApiKey, KeyScope
from server.metrics import Metrics
from server.status import status_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Access:
    scopes: frozenset[KeyScope]
    right: str | None  # "read" or "write" for tenant keys


ACCESS: dict[str, Access] = {
    "tenantkv.v1.TenantAdmin": Access(frozenset({KeyScope.ADMIN}), None),
    "tenantkv.v1.Ingest": Access(frozenset({KeyScope.TENANT}), "write"),
    "tenantkv.v1.Ingest/Unchanged": Access(frozenset({KeyScope.TENANT}), "read"),  # a method's entry overrides its service's
    "tenantkv.v1.Retrieval": Access(frozenset({KeyScope.TENANT}), "read"),
    # a worker key fetches only what a capability names: checked by the handler
    "tenantkv.v1.KVCache": Access(frozenset({KeyScope.TENANT, KeyScope.WORKER}), "read"),
}


MAX_REQUEST_ID_CHARS = 64  # a client's x-request-id is logged with every record: keep it short


@dataclass(frozen=True, slots=True)
class Caller:
    key: ApiKey
    token: str  # the bearer token, so a stream can check its key again at each message
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
        record.tenant = (caller.key.tenant or caller.key.scope.name.lower()) if caller else "-"
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
            method = details.method.lstrip("/")
            access = ACCESS.get(method, ACCESS.get(method.split("/")[0]))
            authorize = None if access is None else functools.partial(self._authorize, access=access)
            handler = self._handlers[details.method] = _wrap(handler, _CallScope(details.method, authorize, self._metrics))
        return handler

    def _authorize(self, metadata: list[tuple[str, str]], request_id: str, access: Access) -> Caller:
        headers = [value for name, value in metadata if name == "authorization"]
        if len(headers) > 1:
            raise Unauthenticated(f"authorization: give one 'authorization' header, got {len(headers)}")
        scheme, _, token = (headers[0] if headers else "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
        key = self._authenticate(token.strip())  # a hash and one LMDB read: cheaper here than a thread hop
        if key.scope not in access.scopes:
            scopes = " or ".join(sorted(scope.name.lower() for scope in access.scopes))
            raise PermissionDenied(f"this call needs a key of scope {scopes}")
        if access.right is not None and access.right not in key.rights:
            raise PermissionDenied(f"this key lacks the {access.right!r} right")
        return Caller(key=key, token=token.strip(), request_id=request_id)


Authorize = Callable[[list[tuple[str, str]], str], Caller]


@dataclass(frozen=True, slots=True)
class Malformed:
    """What a request's deserializer returns for bytes that do not parse as `message_type`."""

    message_type: str


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering a `Malformed` marker instead of raising on bytes that do not parse."""
    if deserializer is None:
        return None
    message_type = method.rsplit("/", 1)[-1] + "'s request"

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return Malformed(message_type)

    return parse


def _parsed(request: Any) -> Any:
    if isinstance(request, Malformed):
        raise InvalidArgument(f"request: the bytes do not parse as {request.message_type} message")
    return request


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _parsed(request)


@dataclass(frozen=True, slots=True)
class _CallScope:
    """What surrounds one method's handler: authorisation first (none for open services), status mapping
    and metrics at the end."""

    method: str
    authorize: Authorize | None
    metrics: Metrics

    @asynccontextmanager
    async def enter(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Each call is counted before its status leaves: a client that has its answer can read its metric."""
        started = time.perf_counter()
        metadata = list(context.invocation_metadata() or ())
        request_id = next((v for k, v in metadata if k == "x-request-id"), "")[:MAX_REQUEST_ID_CHARS] or secrets.token_hex(8)
        token, tenant = None, None
        try:
            if self.authorize is not None:
                caller = self.authorize(metadata, request_id)
                tenant = caller.key.tenant or caller.key.scope.name.lower()
                token = _caller.set(caller)
            yield
        except grpc.aio.AbortError:  # the handler set its status itself
            self.metrics.observe(self.method, context.code() or grpc.StatusCode.UNKNOWN, tenant, started)
            raise
        except asyncio.CancelledError:  # the client went away
            self.metrics.observe(self.method, grpc.StatusCode.CANCELLED, tenant, started)
            raise
        except Exception as exc:  # every failure becomes a status; our own bugs are INTERNAL and logged
            status = status_for(exc)
            if status is None:
                log.exception("internal error in %s (request %s)", self.method, request_id)
                status = grpc.StatusCode.INTERNAL, f"internal error; request id {request_id}"
            else:
                log.info("%s: %s", status[0].name, status[1])
            self.metrics.observe(self.method, status[0], tenant, started)
            await context.abort(*status)
        else:
            self.metrics.observe(self.method, grpc.StatusCode.OK, tenant, started)
        finally:
            if token is not None:
                _caller.reset(token)


def _wrap(handler: grpc.RpcMethodHandler, scope: _CallScope) -> grpc.RpcMethodHandler:
    """The same handler, with authorisation before the behaviour, requests that do not parse refused, and
    errors mapped to status codes."""
    codec = {
        "request_deserializer": _tolerant(handler.request_deserializer, scope.method),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, scope, _parsed), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, scope, _parsed_stream), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, scope, _parsed), **codec)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, scope, _parsed_stream), **codec)


def _unary(behavior: Callable[..., Awaitable[Any]], scope: _CallScope, parsed: Callable[[Any], Any]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with scope.enter(context):
            return await behavior(parsed(request), context)

    return handle


def _streaming(
    behavior: Callable[..., AsyncIterator[Any]], scope: _CallScope, parsed: Callable[[Any], Any]
) -> Callable[..., Awaitable[None]]:
    """Responses go out with `context.write` from this coroutine, not by yielding to gRPC: a client
    that cancels then always interrupts this task, inside its awaits, and the handler's generator
    is closed here, in this task (its `finally` ends the model work at once). Yielded to gRPC, a
    generator caught between two messages was only closed when garbage collected."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> None:
        async with scope.enter(context):
            async with aclosing(behavior(parsed(request), context)) as responses:
                async for response in responses:
                    await context.write(response)

    return handle
