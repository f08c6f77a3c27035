"""Fuzzed requests against a real server: never INTERNAL or UNKNOWN, and the server answers health afterwards.

bench/fuzz.py draws requests from the message descriptors (and mutated or random bytes); this runs a
bounded number of examples so the test stays near a minute; bench/chaos.py runs `fuzz` for longer.
"""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import hostile
from bench.fuzz import fuzz

EXAMPLES = 500


def test_fuzzed_requests_are_never_internal(server, server_config) -> None:
    target = hostile.prepare(server.address, server_config.admin_key_path.read_text().strip(), tenant_id="fuzz")
    report = fuzz(target, EXAMPLES, seed=20)
    assert report.examples == EXAMPLES
    assert report.findings == []
    assert report.codes["INVALID_ARGUMENT"] > 0 and len(report.codes) > 2  # the fuzzer reached past the parser
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
