"""The server's one llama thread: every model call runs on it, in the order requests arrived.

Why one thread: ggml decodes 30-40 % slower once several OS threads have driven it
(measured for the UI, STYLE.md point 5), and the Runtime's SQLite connection and KV caches
are not meant for concurrent use. So requests queue here, first come first served, and
the queue is bounded: when it is full, `submit` raises QueueFull and the client gets 503
with Retry-After instead of waiting behind an unbounded backlog.

Each job carries a stop Event: the HTTP side sets it when the client disconnects, and
`stop_all` sets every one at shutdown, so the reply in flight ends at the next token and
is stored as partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .protocol import ApiError

T = TypeVar("T")


class QueueFull(Exception):
    pass


class Job:
    """One request's work: `run(emit, stop)` on the llama thread; events reach the event loop in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stop = threading.Event()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.finished = False

    def emit(self, kind: str, data: Any) -> None:
        """Called on the llama thread: hand one event to the request's coroutine."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))


class LlamaWorker:
    def __init__(self, max_queue: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgechat-llama")
        # Re-entrant: uvicorn calls stop_all from a signal handler on the loop's thread, which may
        # be interrupted while it holds this lock in submit(); a plain Lock would deadlock there.
        self._lock = threading.RLock()
        self._jobs: set[Job] = set()  # queued and running
        self._capacity = max_queue + 1  # the running job plus max_queue waiting
        self._closing = False

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._jobs)

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run a function on the llama thread outside the request queue (startup, listings, shutdown)."""
        return self._pool.submit(fn)

    def submit(self, job: Job, run: Callable[[Job], Any]) -> None:
        """Queue a request's work; its result arrives as ("done", value) or ("error", exception)."""
        with self._lock:
            if self._closing:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            if len(self._jobs) >= self._capacity:
                raise QueueFull
            self._jobs.add(job)

        def body() -> None:
            try:
                if job.stop.is_set():  # the client left (or the server is stopping) while it waited
                    raise ApiError(503, "the request was cancelled before it started", code="cancelled")
                result = run(job)
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to the request
                job.emit("error", exc)
            else:
                job.emit("done", result)
            finally:
                job.finished = True
                with self._lock:
                    self._jobs.discard(job)

        self._pool.submit(body)

    def stop_all(self) -> None:
        """Refuse new work and stop the running and queued jobs (they store what they have)."""
        with self._lock:
            self._closing = True
            jobs = list(self._jobs)
        for job in jobs:
            job.stop.set()

    def close(self, final: Callable[[], None] | None = None, timeout: float = 30.0) -> None:
        """Stop everything, run `final` (closing the Runtime) on the llama thread, and end the thread."""
        self.stop_all()
        if final is not None:
            done = self._pool.submit(final)
            with contextlib.suppress(Exception):  # closing must not raise at exit
                done.result(timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
