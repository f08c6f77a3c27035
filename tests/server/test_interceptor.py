"""The interceptor: log records carry request id and tenant, bugs are INTERNAL with the request id, bytes that do not
parse are INVALID_ARGUMENT, and the one status table covers every package's errors."""

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from kvcodec import CorruptBlobError
from protos.tenantkv.v1 import retrieval_pb2
from server.interceptor import AuthInterceptor, RequestContextFilter
from server.metrics import Metrics
from server.status import MAX_DETAILS_CHARS, status_for
from store.errors import InvalidArgument, QuotaExceeded
from worker.errors import ContextOverflow, WorkerInputError


def test_logs_carry_request_id_and_tenant(alice, caplog) -> None:
    caplog.handler.addFilter(RequestContextFilter())
    request = retrieval_pb2.SearchRequest(k=0, query_vector=[0.0] * 384)
    metadata = (*alice.client._metadata, ("x-request-id", "req-42"))
    with caplog.at_level(logging.INFO, logger="server.interceptor"), pytest.raises(grpc.RpcError) as err:
        alice.client.retrieval.Search(request, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    records = [r for r in caplog.records if "INVALID_ARGUMENT" in r.getMessage()]
    assert records and records[0].request_id == "req-42" and records[0].tenant == "alice"


async def _broken(request, context):
    raise RuntimeError("lmdb at /secret/path")  # a bug of ours: its text must not reach the client


async def _echo(request, context):
    return request


async def _count(requests, context):
    return health_pb2.HealthCheckRequest(service=str(len([r async for r in requests])))


@asynccontextmanager
async def _open_server() -> AsyncIterator[grpc.aio.Channel]:
    """A grpc.aio server with only the interceptor and three handlers of an open (keyless) service."""
    server = grpc.aio.server(interceptors=[AuthInterceptor(lambda token: None, Metrics(lambda: None))])
    codec = {"request_deserializer": health_pb2.HealthCheckRequest.FromString, "response_serializer": health_pb2.HealthCheckRequest.SerializeToString}
    handlers = {
        "Broken": grpc.unary_unary_rpc_method_handler(_broken),
        "Echo": grpc.unary_unary_rpc_method_handler(_echo, **codec),
        "Count": grpc.stream_unary_rpc_method_handler(_count, **codec),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Open", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def _status(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_a_bug_is_internal_with_the_request_id_in_reply_and_log(caplog) -> None:
    async def scenario():
        async with _open_server() as channel:
            return await _status(channel.unary_unary("/test.Open/Broken")(b"", metadata=(("x-request-id", "req-7"),)))

    with caplog.at_level(logging.ERROR, logger="server.interceptor"):
        code, details = asyncio.run(scenario())
    assert code == grpc.StatusCode.INTERNAL and details == "internal error; request id req-7"
    logged = [r for r in caplog.records if "req-7" in r.getMessage()]
    assert logged and logged[0].exc_info and "secret" in str(logged[0].exc_info[1])


def test_bytes_that_do_not_parse_are_invalid_argument_without_parser_text_or_trace(caplog) -> None:
    good = health_pb2.HealthCheckRequest(service="x").SerializeToString()
    garbage = b"\x0f\x00"  # field 1 with wire type 7: no message of any type

    async def scenario():
        async with _open_server() as channel:
            echo, count = channel.unary_unary("/test.Open/Echo"), channel.stream_unary("/test.Open/Count")
            return [
                await _status(echo(garbage)),
                await _status(count(iter([good, garbage]))),  # a good message, then one that does not parse
                await _status(echo(good)),
                await _status(count(iter([good, good]))),
            ]

    with caplog.at_level(logging.INFO):
        outcomes = asyncio.run(scenario())
    for code, details in outcomes[:2]:
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("request: the bytes do not parse") and "Error parsing" not in details
    assert [code for code, _ in outcomes[2:]] == [grpc.StatusCode.OK, grpc.StatusCode.OK]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_status_table_covers_every_package() -> None:
    assert status_for(ContextOverflow("question: too long"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(WorkerInputError("max_new_tokens: must be positive"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(CorruptBlobError("checksum"))[0] == grpc.StatusCode.DATA_LOSS
    assert status_for(QuotaExceeded("max_chunks"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, details = status_for(InvalidArgument("tenant_id: " + "a" * 20_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) <= MAX_DETAILS_CHARS
    assert status_for(ValueError("a bug of ours")) is None
    assert status_for(KeyError("another")) is None
