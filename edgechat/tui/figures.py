"""Plain-text renderings of the figures the UI shows: kept pure so they are easy to test and reuse."""

from __future__ import annotations

import os
import time
from pathlib import Path

SNAPSHOT_ENV = "EDGECHAT_SNAPSHOT"


def snapshot_mode() -> bool:
    """True under snapshot tests: volatile figures (RAM, timings, ages) are hidden so screens compare equal."""
    return os.environ.get(SNAPSHOT_ENV, "") not in ("", "0")


def duration(seconds: float) -> str:
    """12 ms below a second, 3.1 s above."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 100:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


def megabytes(n_bytes: float) -> str:
    mb = n_bytes / 2**20
    if mb >= 1024:
        return f"{mb / 1024:.1f} GB"
    return f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"


def ago(timestamp: float, now: float | None = None) -> str:
    """How long ago, in the few words a sidebar has room for."""
    if snapshot_mode():
        return "earlier"
    delta = max(0.0, (now if now is not None else time.time()) - timestamp)
    if delta < 60:
        return "just now"
    if delta < 3600:
        return f"{delta // 60:.0f} min ago"
    if delta < 86400:
        return f"{delta // 3600:.0f} h ago"
    if delta < 7 * 86400:
        return f"{delta // 86400:.0f} d ago"
    return time.strftime("%Y-%m-%d", time.localtime(timestamp))


def bar(used: int, limit: int, width: int = 10) -> str:
    """The filled part of a gauge (━ per step; the caller draws the rest dimmed): ━━━ for 30 % of 10."""
    if limit <= 0:
        return ""
    filled = min(width, round(width * used / limit))
    if used > 0 and filled == 0:
        filled = 1
    return "━" * filled


def restore_phrase(source: str, restore_s: float, ttft_s: float, tokens: int = 0, saved_s: float = 0.0) -> str:
    """Where a reopened conversation's KV cache came from, as the user should read it: with the
    `tokens` it held and the prefill time that `saved_s` at the measured rate, when known.

    A transcript rebuild happens during prefill, so its cost is the time to first token.
    """
    held = f" {tokens:,} tokens" if tokens else ""
    saved = f", saved ~{duration(saved_s)}" if saved_s >= 0.05 else ""
    if source == "memory":
        return f"resumed{held} from memory in {duration(restore_s)}{saved}"
    if source == "state":
        return f"resumed{held} from cache in {duration(restore_s)}{saved}"
    if source == "checkpoint":  # restored, then rewound through a context checkpoint
        return f"resumed{held} from a checkpoint in {duration(ttft_s)}{saved}"
    if source == "transcript":
        return f"rebuilt from transcript in {duration(ttft_s)}"
    return ""


def model_label(spec: str) -> str:
    """A model as the user named it: registry names stay, file paths shrink to the file's stem."""
    if os.sep in spec or spec.endswith(".gguf"):
        return Path(spec).stem
    return spec


def first_line(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"
