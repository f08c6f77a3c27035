"""`tenantkv serve` as a real process: health goes SERVING, the admin key file works, SIGTERM stops it cleanly."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.tenantkv.v1 import tenant_admin_pb2, tenant_admin_pb2_grpc
from server.app import TenantKVServer
from client.api import Client
from server.config import ServerConfig
from server.process import free_port, wait_serving


def test_serve_process(tmp_path: Path, model_cache_dir: Path, models) -> None:
    port = free_port()
    toml = tmp_path / "tenantkv.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\nport = {port}\n')
    env = {**os.environ, "TENANTKV_CACHE_DIR": str(model_cache_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(toml)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", timeout_s=120)
        key_file = tmp_path / "data" / "admin.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        with Client(f"127.0.0.1:{port}", key_file.read_text().strip()) as admin:
            admin.create_tenant("acme")
            assert [t.tenant_id for t in admin.list_tenants()] == ["acme"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert "serving" in output and "stopping" in output
    assert "leaked" not in output  # nothing frozen by load() outlives stop() (nanobind reports it at exit)


def test_not_serving_until_loaded(tmp_path: Path) -> None:
    """Between listening and loading, health says NOT_SERVING and calls are UNAVAILABLE."""

    async def scenario() -> None:
        server = TenantKVServer(ServerConfig(data_dir=tmp_path, port=0))
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
                admin = tenant_admin_pb2_grpc.TenantAdminStub(channel)
                try:
                    await admin.ListTenants(tenant_admin_pb2.ListTenantsRequest(), metadata=(("authorization", "Bearer tkv_x"),))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                else:
                    raise AssertionError("a call before loading must fail")
        finally:
            await server.stop()

    asyncio.run(scenario())
