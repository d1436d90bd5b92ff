"""The UI's one llama.cpp thread: one thread, in order, survives a failed job, and a bounded close."""

from __future__ import annotations

import threading
import time

from edgechat.tui.llama_thread import LlamaThread


def test_jobs_run_in_submission_order_on_one_thread() -> None:
    errors: list[BaseException] = []
    llama = LlamaThread(on_error=errors.append)
    ran: list[tuple[int, int]] = []
    for i in range(20):
        assert llama.submit(lambda i=i: ran.append((i, threading.get_ident())))
    assert llama.close(timeout=10)
    assert [i for i, _ in ran] == list(range(20))
    assert len({ident for _, ident in ran}) == 1, "every job ran on the same thread"
    assert ran[0][1] != threading.get_ident() and not errors


def test_a_failing_job_is_reported_and_the_next_one_still_runs() -> None:
    errors: list[BaseException] = []
    llama = LlamaThread(on_error=errors.append)
    after: list[str] = []

    def fail() -> None:
        raise ValueError("bad job")

    llama.submit(fail)
    llama.submit(lambda: after.append("ran"))
    assert llama.close(timeout=10)
    assert [str(e) for e in errors] == ["bad job"] and after == ["ran"]


def test_close_returns_within_its_bound_while_a_job_is_stuck() -> None:
    llama = LlamaThread(on_error=lambda exc: None)
    release = threading.Event()
    started = threading.Event()
    order: list[str] = []

    def stuck() -> None:  # a llama.cpp call that does not come back
        started.set()
        release.wait(30)
        order.append("stuck")

    llama.submit(stuck)
    llama.submit(lambda: order.append("queued"))
    assert started.wait(10)
    t0 = time.perf_counter()
    assert not llama.close(lambda: order.append("last"), timeout=0.3)
    assert time.perf_counter() - t0 < 2, "close gave up after its timeout"
    assert llama.closing and not llama.submit(lambda: order.append("too late"))
    release.set()
    assert llama.close(timeout=10), "a second close waits for the rest"
    assert order == ["stuck", "queued", "last"]
