"""A balloon: a child process that takes and gives back RAM on command, for memory-pressure tests.

    with Balloon() as b:
        b.hold(600 << 20)   # allocate and touch 600 MiB (returns once it is resident)
        ...
        b.hold(0)           # give it all back

The memory is touched page by page, so it is resident (a plain bytearray from calloc may be
lazily zeroed pages that count for nothing). The child refuses to take RAM past a safety line
(`keep_free`, default 2 GiB of available RAM) so a test on a shared machine never drives it
toward the OOM killer; it dies with its parent (stdin closes).

Run alone: `python scripts/balloon.py` reads "MiB" lines on stdin and answers "held N".
"""

from __future__ import annotations

import subprocess
import sys
from types import TracebackType

CHUNK = 16 << 20
PAGE = 4096
KEEP_FREE = 2 << 30


def _child(keep_free: int) -> None:
    import psutil

    chunks: list[bytearray] = []
    for line in sys.stdin:
        want = int(line.strip() or 0) << 20
        while len(chunks) * CHUNK > want:
            chunks.pop()
        while len(chunks) * CHUNK + CHUNK <= want:
            if psutil.virtual_memory().available - CHUNK < keep_free:
                break  # the safety line: hold less than asked rather than push the machine to OOM
            chunk = bytearray(CHUNK)
            chunk[::PAGE] = b"\x01" * (CHUNK // PAGE)  # touch every page: resident, not just reserved
            chunks.append(chunk)
        print(f"held {len(chunks) * CHUNK}", flush=True)


class Balloon:
    """Drive a balloon child process; `hold(n)` returns the bytes it really holds."""

    def __init__(self, keep_free: int = KEEP_FREE) -> None:
        self.keep_free = keep_free
        self.proc: subprocess.Popen[str] | None = None
        self.held = 0

    def __enter__(self) -> Balloon:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.keep_free)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def hold(self, n_bytes: int) -> int:
        """Take (or give back) memory until the child holds about `n_bytes` (whole 16 MiB chunks)."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{max(0, n_bytes) >> 20}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        self.held = int(answer[1]) if len(answer) == 2 else 0
        return self.held

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


if __name__ == "__main__":
    _child(int(sys.argv[1]) if len(sys.argv) > 1 else KEEP_FREE)
