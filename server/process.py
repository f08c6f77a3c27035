"""`tenantkv serve` and `tenantkv worker` as child processes on free loopback ports: how tests and benchmarks run real ones."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free now: every socket stays bound until all are chosen,
    since ports taken one at a time may repeat (a server and its workers on one port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def wait_serving(address: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll the health service until it says SERVING; TimeoutError after `timeout_s`, at once if `process` exits."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise TimeoutError(f"{address}: the process exited with {process.returncode} before serving")
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
        _wait_or_kill(self.process, self.address, timeout_s)
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


class WorkerProcess:
    """Starts `python -m server.cli worker` on `port` with a worker key, fetching KV from the server at `store`."""

    def __init__(
        self, store: str, api_key: str, port: int | None = None, cache_dir: Path | None = None, kv_cache_bytes: int | None = None
    ) -> None:
        self.port = port or free_port()
        self._args = [sys.executable, "-m", "server.cli", "worker", "--store", store, "--listen", self.address, "--device", "cpu"]
        if cache_dir is not None:
            self._args += ["--cache-dir", str(cache_dir)]
        if kv_cache_bytes is not None:
            self._args += ["--kv-cache-bytes", str(kv_cache_bytes)]
        self._env = {**os.environ, "TENANTKV_API_KEY": api_key}
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> "WorkerProcess":
        self.process = subprocess.Popen(self._args, env=self._env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_or_kill(self.process, self.address, timeout_s)
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye, as a crashed machine."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def _wait_or_kill(process: subprocess.Popen, address: str, timeout_s: float) -> None:
    """Until the child serves; one that does not in time is killed, so no caller leaves it behind."""
    try:
        wait_serving(address, timeout_s, process)
    except TimeoutError:
        process.kill()
        process.wait(timeout=30)
        raise
