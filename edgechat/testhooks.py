"""Fault injection for the crash tests: `EDGECHAT_TEST_KILL_AT=phase[:delay_s]`.

At `kill_point(phase)` the process sends itself SIGKILL, at once or after `delay_s` seconds
(from a timer thread, so the kill lands inside whatever the turn does next: a load, a
restore, a prefill, a state save). Unset, it costs one dict lookup. Never set it outside tests.
"""

from __future__ import annotations

import os
import signal
import threading
import time

ENV = "EDGECHAT_TEST_KILL_AT"


def kill_point(phase: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, delay = spec.partition(":")
    if name != phase:
        return
    seconds = float(delay or 0)
    if seconds <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
        return

    def later() -> None:
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=later, daemon=True).start()
