"""A per-conversation lock shared by every edgechat process on the machine.

Two processes appending to one conversation would interleave turns and overwrite each
other's KV state; the lock makes the second one wait, then fail with a clear message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .config import private_dir
from .errors import BusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock, single-user anyway
    fcntl = None  # type: ignore[assignment]


class ConversationLock:
    def __init__(
        self, directory: Path, cid: str, timeout_s: float = 30.0, on_wait: Callable[[str], None] | None = None
    ) -> None:
        self.path = directory / f"{cid}.lock"
        self.cid = cid
        self.timeout_s = timeout_s
        self.on_wait = on_wait  # told the holder's pid once, when the lock is found taken
        self._fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is None:
            self._fd = fd
            return
        deadline = time.monotonic() + self.timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and self.on_wait is not None and self.timeout_s > 0:
                    told = True
                    self.on_wait(os.pread(fd, 32, 0).decode(errors="replace").strip() or "?")
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise BusyError(
                        f"conversation {self.cid} is busy in another edgechat process (pid {holder})",
                        "wait for that reply to finish, then run the command again",
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        if fcntl is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def discard(self) -> None:
        """Remove the lock file while holding it: for a conversation that was just deleted.

        A process already waiting on the old file gets it next and then finds no
        conversation; a later one creates a fresh file. Either way no lock files pile up.
        """
        if self._fd is not None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> ConversationLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
