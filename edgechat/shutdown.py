"""Ending the process politely: SIGTERM and SIGHUP stop a streaming reply the way Ctrl+Q does.

A logout, a closed terminal or `kill` sends one of these. The first one sets a stop flag: the
reply ends at its next token, is stored (partial, reason "interrupted"), the KV state is saved
(tens of milliseconds), and the process exits with the shell's convention, 128 + the signal
(143 for SIGTERM, 129 for SIGHUP). A second signal exits at once: SQLite commits and state
files are written atomically, so dying there loses at most the reply's last fraction of a
second, and corrupts nothing.

The CLI installs this around `send`, `generate` and `chat`. The Python API installs nothing by
itself (a library must not take over its host's signals); scripts wrap a turn:

    with stop_on_signals() as sig:
        reply = conversation.send(text, stop=sig.event)
    # a signal ended the reply: it is stored, and leaving the block raised SystemExit(143)

Without it the default action kills the process, and the turn is kept up to its last write.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

HANDLED: tuple[signal.Signals, ...] = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
)


class StopEvent(threading.Event):
    """A stop flag that says why: a reply stopped by it is stored as partial with `reason`
    ("stopped" for a user's stop, "interrupted" when the process is told to end)."""

    def __init__(self, reason: str = "stopped") -> None:
        super().__init__()
        self.reason = reason


class SignalStop:
    """What `stop_on_signals` hands out: the stop flag for the turn, and the signal, once one came."""

    def __init__(self, event: StopEvent) -> None:
        self.event = event
        self.signum: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 0

    def handle(self, signum: int, _frame: FrameType | None = None) -> None:
        if self.signum is not None:
            os._exit(128 + signum)  # the second signal: leave now
        self.signum = signum
        self.event.reason = "interrupted"
        self.event.set()


@contextlib.contextmanager
def stop_on_signals(
    signals: Sequence[int] = HANDLED, *, event: StopEvent | None = None, exit: bool = True
) -> Iterator[SignalStop]:
    """SIGTERM/SIGHUP set `.event` while the block runs; with `exit`, leaving the block after a
    signal raises SystemExit(128 + signal). Off the main thread (where Python cannot install
    handlers) it only hands out the flag."""
    stop = SignalStop(event or StopEvent("interrupted"))
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            previous[s] = signal.signal(s, stop.handle)
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
    if exit and stop.signum is not None:
        raise SystemExit(stop.exit_code)
