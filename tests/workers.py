"""Real `tenantkv.v1.Worker` services in background threads of the test process, over the session's models.

Each has an engine (and scheduler) of its own over the shared weights, as separate worker
processes would, without each loading the models again.
"""

import asyncio
import threading
import time

from server.app import ServerThread
from server.runtime import Models
from worker.engine import Engine, EngineConfig
from worker.node import WorkerNode
from worker.serve import WorkerServer, WorkerServiceConfig


class WorkerThread:
    def __init__(self, config: WorkerServiceConfig, models: Models) -> None:
        self.node = WorkerNode(models.llm, models.embedder, Engine(models.llm, EngineConfig()))
        self.server = WorkerServer(config, self.node)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tenantkv-test-worker", daemon=True)

    @property
    def address(self) -> str:
        return self.server.config.listen

    def start(self) -> "WorkerThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result()
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.node.close()

    def __enter__(self) -> "WorkerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_all_up(server: ServerThread, timeout_s: float = 30) -> None:
    """Until the server's router has admitted every configured worker."""
    deadline = time.monotonic() + timeout_s
    while not all(w.up for w in server.server.runtime.router.workers):
        if time.monotonic() > deadline:
            raise TimeoutError("the router did not admit every worker")
        time.sleep(0.05)
