"""Log records emitted while a request is handled carry its request id and tenant."""

import logging

import grpc
import pytest

from protos.tenantkv.v1 import retrieval_pb2
from server.interceptor import RequestContextFilter


def test_logs_carry_request_id_and_tenant(alice, caplog) -> None:
    caplog.handler.addFilter(RequestContextFilter())
    request = retrieval_pb2.SearchRequest(k=0, query_vector=[0.0] * 384)
    metadata = (*alice.client._metadata, ("x-request-id", "req-42"))
    with caplog.at_level(logging.INFO, logger="server.interceptor"), pytest.raises(grpc.RpcError) as err:
        alice.client.retrieval.Search(request, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    records = [r for r in caplog.records if "INVALID_ARGUMENT" in r.getMessage()]
    assert records and records[0].request_id == "req-42" and records[0].tenant == "alice"
