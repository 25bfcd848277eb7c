"""The exporters' own worker threads, for the blocking work they must keep off the loop.

Spool appends (an fsync each), spool reads, batch encoding (JSON, protobuf, gzip) and
the status listener's text run here, never in asyncio's default executor: the request
path (ai-prompt-guard, ai-sanitizer, ...) uses that one through `asyncio.to_thread`,
and a slow disk under a spool must not make a call wait for a free worker.

`run_blocking(fn, *args)` is `asyncio.to_thread` on this pool (context included).
`shutdown()` is called once at process exit (addons/gateway.py, Lifecycle); a later
`run_blocking` (a script reload keeps this module) starts a new pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: workers: enough for a few sinks' spools and encodings at once, few enough that the
#: exporters never take a large share of a small machine
WORKERS = 4

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """The exporters' executor (made on first use, again after a shutdown)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="llmitm-export")
        return _pool


async def run_blocking[T](fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` in the exporters' pool and await its result."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    executor = pool()
    try:
        future = loop.run_in_executor(executor, call)  # submits now, or raises
    except RuntimeError:  # shut down under us (a reload racing the old script's exit)
        _forget(executor)
        future = loop.run_in_executor(pool(), call)
    return await future


def _forget(executor: ThreadPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is executor:
            _pool = None


def shutdown(wait: bool = False) -> None:
    """Stop the pool's threads once their current job is done (process exit)."""
    global _pool
    with _lock:
        executor, _pool = _pool, None
    if executor is not None:
        executor.shutdown(wait=wait, cancel_futures=False)


def active() -> bool:
    """Whether a pool is running (for tests)."""
    return _pool is not None
