"""The disk budget for saved KV states: how much they may take, what is free, what to drop.

A state is a cache of its transcript, so keeping it is a trade of disk for prefill time.
The budget caps the total (`state_budget_mb`, else the smaller of 20 GiB and 10 % of the
disk free to the states); when a save would pass it, the least recently used
conversations' states go first, never the one being saved. A disk that is nearly full
is not the budget's to fix: the save is skipped, the turn is kept.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import BusyError
from .state import StateFiles, StateUsage

DEFAULT_CAP = 20 << 30
DEFAULT_SHARE = 0.10
# Free disk a save must leave behind: the smaller of 1 GiB and 2 % of the disk. Below it
# the other programs on the machine (and SQLite's own journal) need the room more.
FLOOR_CAP = 1 << 30
FLOOR_SHARE = 0.02


@dataclass(frozen=True)
class DiskView:
    """What `edgechat plan` and `edgechat cache` show of the disk the states live on."""

    states_dir: str
    free_bytes: int
    total_bytes: int
    budget_bytes: int
    budget_from: str  # "state_budget_mb" (config.toml or --state-budget-mb) | "default"
    states_bytes: int
    conversations: int  # conversations with files in the states dir
    floor_bytes: int  # a save that would leave less free than this is skipped


def disk_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the filesystem that holds `path` (or would, once created)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return usage.free, usage.total


def floor_bytes(total: int) -> int:
    return int(min(FLOOR_CAP, total * FLOOR_SHARE))


def budget_bytes(state_budget_mb: int | None, free: int, states: int) -> tuple[int, str]:
    """The budget in bytes and where it came from.

    The default counts the states' own bytes as free: otherwise every save would shrink the
    budget it is checked against, and a filling disk would empty the cache a little at a time.
    """
    if state_budget_mb:
        return state_budget_mb << 20, "state_budget_mb"
    return int(min(DEFAULT_CAP, (free + states) * DEFAULT_SHARE)), "default"


def disk_view(files: StateFiles, state_budget_mb: int | None) -> DiskView:
    usage = files.usage()
    used = sum(u.bytes for u in usage.values())
    free, total = disk_space(files.dir)
    budget, source = budget_bytes(state_budget_mb, free, used)
    return DiskView(str(files.dir), free, total, budget, source, used, len(usage), floor_bytes(total))


def victims(usage: dict[str, StateUsage], keep: str | None, need: int, budget: int) -> list[StateUsage]:
    """The least recently used states to drop so that the others plus `need` bytes fit `budget`.

    Incomplete leftovers (no header) go first whatever their age: they can never be restored.
    """
    others = sorted((u for c, u in usage.items() if c != keep), key=lambda u: (u.complete, u.last_used))
    total = sum(u.bytes for u in others) + need
    out = []
    for u in others:
        if total <= budget:
            break
        out.append(u)
        total -= u.bytes
    return out


def drop_states(
    files: StateFiles, lock_dir: Path, chosen: Iterable[StateUsage], why: str
) -> tuple[list[StateUsage], list[str]]:
    """Delete the chosen states, each under its conversation's lock; a conversation busy in a
    turn (here or in another process) keeps its state. Returns (dropped, busy ids)."""
    from .lock import ConversationLock

    dropped, busy = [], []
    for u in chosen:
        try:
            with ConversationLock(lock_dir, u.cid, timeout_s=0):
                files.drop(u.cid, why)
        except BusyError:
            busy.append(u.cid)
            continue
        except OSError:
            continue
        dropped.append(u)
    return dropped, busy


def mib(n: int) -> str:
    """Bytes as the notices say them: 12.3 MB below 10 GB, 12.3 GB above."""
    if n >= 10 << 30:
        return f"{n / 2**30:.1f} GB"
    return f"{n / 2**20:.1f} MB"


def lock_dir_for(files: StateFiles) -> Path:
    """Conversation locks live beside the states dir (data_dir/locks, data_dir/states)."""
    return files.dir.parent / "locks"
