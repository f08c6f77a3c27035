"""`tenantkv serve` as a child process on a free loopback port: how tests and benchmarks run a real server."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout_s: float) -> None:
    """Poll the health service until it says SERVING; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} never became SERVING")


class ServerProcess:
    """Starts `python -m server.cli serve` with `settings` as TENANTKV_* variables (data_dir and port included)."""

    def __init__(self, data_dir: Path, settings: dict[str, object] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self._env = {**os.environ, "TENANTKV_DATA_DIR": str(self.data_dir), "TENANTKV_PORT": str(self.port)}
        self._env |= {f"TENANTKV_{key.upper()}": str(value) for key, value in (settings or {}).items()}
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def start(self, timeout_s: float = 120) -> "ServerProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"], env=self._env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_serving(self.address, timeout_s)
        return self

    def memory_bytes(self) -> dict[str, int]:
        """The server's resident memory from /proc: "rss" and its two parts, "anon" (the process's
        own) and "file" (file-backed pages, e.g. LMDB's map, which the kernel can take back)."""
        lines = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if line.startswith(("VmRSS", "RssAnon", "RssFile")))
        return {name: int(fields[key].split()[0]) * 1024 for name, key in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))}

    def rss_bytes(self) -> int:
        return self.memory_bytes()["rss"]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
