"""Runs blocking work off the event loop: store work on the default pool, the server's own model work on one thread.

The server's model work (query and ingestion embeddings with the small embedder, tokenising
documents) shares one thread because torch's intra-op pool does not gain from concurrent calls on
a small CPU. The generation model is the worker engine's scheduler's alone.
"""

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Offload:
    def __init__(self) -> None:
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenantkv-model")

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def model(self, fn: Callable[..., T], *args: Any) -> T:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._model, call)

    def shutdown(self) -> None:
        self._model.shutdown(wait=True, cancel_futures=True)
