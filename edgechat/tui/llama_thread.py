"""The one thread on which the UI runs llama.cpp: loads, turns, deletes, GPU memory probes.

ggml's CPU backend decodes 30-40 % slower once several OS threads have driven it, and Textual
gives each thread worker a new thread (measured with scripts/bench_tui.py). So the UI never
starts a worker for llama.cpp work: it queues a job here, and the job reports back by posting
a message to the UI.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

Job = Callable[[], object]


class LlamaThread:
    """One long-lived thread running jobs one at a time, in the order they were submitted.

    A job that raises goes to `on_error` (called on this thread); the thread carries on with the
    next one. `close` ends it after the jobs already queued, and waits a bounded time: a call
    stuck inside llama.cpp cannot be interrupted, so quitting must not wait on it forever.
    """

    def __init__(self, on_error: Callable[[BaseException], None], name: str = "edgechat-llama") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._on_error = on_error
        self._closing = False
        self._lock = threading.Lock()  # a job submitted while close runs either runs or is refused, never lost
        # A daemon: a job still stuck after close gave up on it cannot keep the process alive.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        """Set by `close`: a download in progress gives up (it resumes next time)."""
        return self._closing

    def submit(self, job: Job) -> bool:
        """Queue `job` behind the others; False, and it never runs, once `close` has been called."""
        with self._lock:
            if self._closing:
                return False
            self._jobs.put(job)
        return True

    def close(self, last: Job | None = None, timeout: float = 30.0) -> bool:
        """Run the queued jobs, then `last`, then end; True when the thread ended within `timeout` s.

        Call it again to wait longer: `last` is taken from the first call only.
        """
        with self._lock:
            if not self._closing:
                self._closing = True
                if last is not None:
                    self._jobs.put(last)
                self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - one failed job must not end the thread
                with contextlib.suppress(Exception):  # nor can a failing report of it
                    self._on_error(exc)
