"""How many CPU threads llama.cpp gets, chosen from how busy the machine is right now.

llama.cpp's worker threads meet at a barrier after every operation, so one thread that
the OS preempts for another process stalls the whole step: on a 2-core laptop with one
busy process, decoding with 2 threads ran at a third of the speed of 1 thread (issue 12).
So the count follows the free cores, not the core count:

- `choose_threads` (pure) turns one `CpuReading` into decode and prefill counts;
- `LoadMonitor` takes those readings from psutil (per-CPU busy time minus this process's
  own CPU time, inside the process's CPU affinity);
- `Governor` (pure, fed per-token latencies) steps the decode count down when tokens
  suddenly slow (others took the cores) and back up when idle CPU shows up again;
- `ThreadControl` ties them to an engine: one call before prefill, one per decoded token.

An explicit `--threads N` pins both counts and turns all of this off.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

# A core counts as free for decode when at least 70 % of it is idle: decode steps are short
# and a preempted thread stalls every other one. Prefill steps are long matmuls that share
# a half-free core better, so half a free core is enough there.
DECODE_SLACK = 0.3
PREFILL_SLACK = 0.5
# Per-token latency this many times the calm latency at the same thread count is a "jump".
JUMP = 1.6
# Fewer threads must have been clearly faster to count against stepping back up.
STEP_UP_MARGIN = 1.15
# Idle cores (over the last monitor window) needed before trying one more decode thread.
IDLE_TO_STEP_UP = 0.6


class CpuReading(NamedTuple):
    """How busy the machine was over a short recent window.

    `busy` holds each logical CPU's busy share (0..1) counting every process, this one
    included; `own` is the cores this process itself used in the same window, so that
    others' load is `sum(busy) - own`. `affinity` lists the logical CPUs this process may
    run on (empty: all of them).
    """

    busy: tuple[float, ...]
    own: float
    physical: int
    logical: int
    affinity: tuple[int, ...] = ()

    @property
    def allowed(self) -> tuple[int, ...]:
        cpus = tuple(i for i in self.affinity if 0 <= i < len(self.busy))
        return cpus or tuple(range(len(self.busy)))

    @property
    def smt(self) -> float:
        """Logical CPUs per physical core (2 with hyper-threading)."""
        return max(1.0, self.logical / max(1, self.physical))

    @property
    def cores(self) -> int:
        """Physical cores this process may use: a hyper-thread sibling adds little to llama.cpp's matmuls."""
        return max(1, int(len(self.allowed) / self.smt + 0.5))

    @property
    def others(self) -> float:
        """Logical CPUs' worth of work other processes did in the window."""
        return max(0.0, sum(self.busy[i] for i in self.allowed) - self.own)

    @property
    def idle(self) -> float:
        """Logical CPUs' worth of time nobody used in the window."""
        return max(0.0, len(self.allowed) - sum(self.busy[i] for i in self.allowed))


class ThreadChoice(NamedTuple):
    """Thread counts for one turn; `auto` is False when --threads pinned them."""

    decode: int
    prefill: int
    auto: bool = True

    def label(self) -> str:
        """For the status bar and tables: "2 threads", "1/2 threads" (decode/prefill), "pinned"."""
        n = f"{self.decode}" if self.decode == self.prefill else f"{self.decode}/{self.prefill}"
        return f"{n} thread{'s' if n != '1' else ''}" + ("" if self.auto else " (pinned)")


def choose_threads(reading: CpuReading) -> ThreadChoice:
    """Decode and prefill thread counts for the free cores in `reading` (pure, deterministic).

    Free cores are the allowed CPUs minus what other processes used, in physical cores;
    decode takes the cores that are at least 70 % free, prefill those at least half free,
    both within 1..physical cores allowed.
    """
    free = max(0.0, len(reading.allowed) - reading.others) / reading.smt
    cap = reading.cores
    decode = min(cap, max(1, int(free + DECODE_SLACK)))
    prefill = min(cap, max(1, int(free + PREFILL_SLACK)))
    return ThreadChoice(decode=decode, prefill=prefill)


def pinned(threads: int) -> ThreadChoice:
    return ThreadChoice(decode=threads, prefill=threads, auto=False)


class Governor:
    """The decode watchdog: fed each token's latency, it says when to change the thread count.

    It learns the calm latency at each count (the lowest median of `window` tokens). When
    the median of the last `window` tokens passes JUMP times that, other work has taken a
    core: one thread fewer. It steps back up when the machine shows idle CPU again
    (`idle` from the load monitor) — and if the extra thread then proves slower than the
    count below it, it steps down again and waits twice as long before the next try.
    Pure: the same latencies and idle readings give the same steps.
    """

    def __init__(self, start: int, max_threads: int, *, window: int = 4, settle: int = 8) -> None:
        self.n = max(1, min(start, max_threads))
        self.max_threads = max(1, max_threads)
        self.window = window
        self.settle = settle
        self.calm: dict[int, float] = {}
        self.recent: deque[float] = deque(maxlen=window)
        self.since_change = 0
        self.backoff = settle
        self.tried_up_from: int | None = None
        self.changes = 0

    def observe(self, latency_s: float, idle: float | None = None) -> int | None:
        """One decoded token's latency; returns the new decode thread count when it should change."""
        self.recent.append(latency_s)
        self.since_change += 1
        if len(self.recent) < self.window:
            return None
        med = _median(self.recent)
        n = self.n
        calm = self.calm.get(n)
        if calm is None or med < calm:
            self.calm[n] = calm = med
        below = self.calm.get(n - 1)
        if n > 1 and (med > JUMP * calm or (below is not None and med > below * STEP_UP_MARGIN)):
            if self.tried_up_from == n - 1:
                self.backoff *= 2  # the step up did not pay: wait longer before the next one
            return self._move(n - 1, tried_up=None)
        if self.tried_up_from is not None and self.since_change >= self.settle:
            self.tried_up_from = None
            self.backoff = self.settle  # the step up held
        if n < self.max_threads and idle is not None and idle >= IDLE_TO_STEP_UP and self.since_change >= self.backoff:
            return self._move(n + 1, tried_up=n)
        return None

    def _move(self, n: int, tried_up: int | None) -> int:
        self.n = n
        self.recent.clear()
        self.since_change = 0
        self.tried_up_from = tried_up
        self.changes += 1
        return n


class _Snap(NamedTuple):
    wall: float
    busy: tuple[float, ...]  # cumulative busy seconds per logical CPU
    own: float  # cumulative CPU seconds of this process


class LoadMonitor:
    """Readings of per-CPU load over the last fraction of a second, from psutil.

    A reading compares now with an earlier snapshot; a small daemon thread keeps one about
    every half second so a reading taken after the user typed for a minute still reflects
    the last second, not the minute. Any probe failure gives an "all idle" reading.
    """

    PERIOD_S = 0.5
    MIN_WINDOW_S = 0.05

    def __init__(self) -> None:
        import psutil

        self._ps = psutil
        self._proc = psutil.Process()
        self.logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        self.physical = psutil.cpu_count(logical=False) or self.logical
        try:
            self.affinity: tuple[int, ...] = tuple(self._proc.cpu_affinity() or ())
        except (AttributeError, OSError, psutil.Error):  # macOS has no affinity
            self.affinity = ()
        self._snaps: deque[_Snap] = deque(maxlen=4)
        self._lock = threading.Lock()
        self._last: CpuReading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot()

    def _snapshot(self) -> _Snap | None:
        try:
            per = self._ps.cpu_times(percpu=True)
            own = self._proc.cpu_times()
        except Exception:  # noqa: BLE001 - a probe never raises
            return None
        busy = tuple(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) for t in per)
        snap = _Snap(time.perf_counter(), busy, own.user + own.system)
        with self._lock:
            self._snaps.append(snap)
        return snap

    def _run(self) -> None:
        while not self._stop.wait(self.PERIOD_S):
            self._snapshot()

    def reading(self, max_age_s: float = 2.0) -> CpuReading:
        """Load since the oldest kept snapshot no older than `max_age_s` (else the newest one)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgechat-load-monitor", daemon=True)
            self._thread.start()
        cutoff = time.perf_counter() - max_age_s
        with self._lock:
            old = next((s for s in self._snaps if s.wall >= cutoff), self._snaps[-1] if self._snaps else None)
        now = self._snapshot()
        if old is None or now is None or now.wall - old.wall < self.MIN_WINDOW_S or len(now.busy) != len(old.busy):
            return self._last or self.idle_reading()
        dt = now.wall - old.wall
        busy = tuple(min(1.0, max(0.0, (b - a) / dt)) for a, b in zip(old.busy, now.busy, strict=True))
        own = max(0.0, (now.own - old.own) / dt)
        self._last = CpuReading(busy, own, self.physical, self.logical, self.affinity)
        return self._last

    def idle_reading(self) -> CpuReading:
        return CpuReading((0.0,) * self.logical, 0.0, self.physical, self.logical, self.affinity)

    def close(self) -> None:
        self._stop.set()


class ThreadControl:
    """The engine's thread policy: a choice before each prefill, the watchdog during decode.

    `apply(decode, prefill)` is the engine's setter (llama_set_n_threads on the live
    context). With `pin` set (--threads) the counts never change.
    """

    CHECK_EVERY_S = 0.25  # how often the decode loop asks the monitor for idle CPU

    def __init__(self, apply: Callable[[int, int], None], pin: int | None = None) -> None:
        self.apply = apply
        self.monitor: LoadMonitor | None = None
        self.choice = pinned(pin) if pin else ThreadChoice(1, 1)
        self.governor: Governor | None = None
        self._smt = 1.0
        self._idle: float | None = None
        self._checked = 0.0
        self.changes = 0
        if not pin:
            self._start_monitor()

    def _start_monitor(self) -> None:
        if self.monitor is None:
            self.monitor = LoadMonitor()
        idle = self.monitor.idle_reading()
        self._smt = idle.smt
        self.choice = choose_threads(idle)

    def pin(self, threads: int | None) -> None:
        """Pin both counts (as --threads does), or with None go back to choosing them per turn."""
        self.governor = None
        if threads:
            self.choice = pinned(threads)
            self.apply(threads, threads)
        else:
            self._start_monitor()

    @property
    def max_threads(self) -> int:
        return self.monitor.idle_reading().cores if self.monitor else self.choice.decode

    def before_prefill(self) -> ThreadChoice:
        """Read the machine and set this turn's counts (a no-op when pinned)."""
        if self.choice.auto and self.monitor is not None:
            choice = self.choice = choose_threads(self.monitor.reading())
            self.apply(choice.decode, choice.prefill)
            self.governor = Governor(choice.decode, self.max_threads)
            self._idle, self._checked = None, time.perf_counter()
        self.changes = 0
        return self.choice

    def on_token(self, latency_s: float) -> None:
        """One decoded token's latency: the watchdog may change the decode count."""
        gov = self.governor
        if gov is None or self.monitor is None:
            return
        now = time.perf_counter()
        if now - self._checked >= self.CHECK_EVERY_S:
            self._checked = now
            self._idle = self.monitor.reading(max_age_s=2 * self.CHECK_EVERY_S).idle / self._smt
        n = gov.observe(latency_s, self._idle)
        if n is not None:
            self._idle = None  # a reading from before the change says nothing about after it
            self.choice = ThreadChoice(decode=n, prefill=self.choice.prefill)
            self.apply(n, self.choice.prefill)
            self.changes += 1

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()


def replay(trace: Sequence[tuple[float, float | None]], start: int, max_threads: int) -> list[int]:
    """The decode thread count after each (latency, idle) step of a trace: for tests and tuning."""
    gov = Governor(start, max_threads)
    out = []
    for latency, idle in trace:
        gov.observe(latency, idle)
        out.append(gov.n)
    return out


def _median(values: Sequence[float] | deque[float]) -> float:
    """statistics.median without importing statistics (it pulls in fractions and decimal: ~10 ms of
    every cold start, issue 12)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
