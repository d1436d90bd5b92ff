"""What to do when the next turn would not fit: summarize, truncate (shift), or refuse.

The transcript never loses a message: compacted ones are only marked, and a summary is
stored as a message of its own. These functions decide and produce; session.py persists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import SamplingSettings
from .engine import Engine
from .errors import BudgetError, Cancelled
from .store import Message

# Compact down to this share of the context so the next few turns fit without compacting again.
TARGET_SHARE = 0.6
SUMMARY_MAX_TOKENS = 160


def summary_tokens(n_ctx: int) -> int:
    """A summary's length cap: an eighth of the context, within [32, SUMMARY_MAX_TOKENS]."""
    return max(32, min(SUMMARY_MAX_TOKENS, n_ctx // 8))


SUMMARY_INSTRUCTION = (
    "Summarize the conversation so far in a few short sentences. Keep names, numbers, "
    "decisions and open questions. Reply with the summary only."
)


@dataclass(frozen=True)
class Compaction:
    """One compaction: which messages left the context, and what replaced them."""

    policy: str  # "summarize" | "truncate"
    compacted_ids: tuple[int, ...]
    summary: str | None
    shifted: bool  # truncation done in the KV cache, without re-prefill
    seconds: float
    tokens_before: int
    tokens_after: int


def cut_points(messages: Sequence[Message]) -> list[int]:
    """Indices where a turn starts: compaction never splits a user message from its reply."""
    return [i for i, m in enumerate(messages) if m.role == "user" and i > 0] + [len(messages)]


def choose_cut(
    messages: Sequence[Message],
    prompt_len: Callable[[int], int],
    reserve: int,
    n_ctx: int,
    *,
    message_len: Callable[[], int] | None = None,
) -> int:
    """The fewest oldest messages to drop so prompt + reply fits in TARGET_SHARE of the context.

    prompt_len(k) is the prompt's token count with messages[:k] compacted; it only
    shrinks as k grows, so the cut is found by bisection: a handful of renders, not one
    per turn (each render tokenizes the new message again, which for a pasted document
    is most of the cost). Falls back to whatever fits the whole context; raises
    BudgetError at once when even the new message alone does not fit. `message_len()`
    gives the new message's own prompt size (without the room kept for a summary), for
    the error to state; by default prompt_len(len(messages)).
    """
    cuts = cut_points(messages)
    seen: dict[int, int] = {}
    measure = prompt_len

    def cached(k: int) -> int:
        if k not in seen:
            seen[k] = measure(k)
        return seen[k]

    prompt_len = cached
    alone = prompt_len(cuts[-1])
    if alone + reserve > n_ctx:
        own = message_len() if message_len is not None else alone
        extra = f" and {alone - own} for a summary of the earlier turns" if alone > own else ""
        raise BudgetError(
            f"this message needs {own} tokens plus {reserve} for the reply{extra}; the context holds {n_ctx}",
            "shorten the message, lower --max-tokens, or raise --ctx",
        )
    target = max(int(n_ctx * TARGET_SHARE), 1)
    for limit in (target, n_ctx):
        k = _first_fitting(cuts, prompt_len, limit - reserve)
        if k is not None:
            return k
    return cuts[-1]  # unreachable: the last cut fits n_ctx (checked above)


def _first_fitting(cuts: list[int], prompt_len: Callable[[int], int], room: int) -> int | None:
    """The smallest cut whose prompt fits `room` tokens, given prompt_len non-increasing in the cut."""
    lo, hi = 0, len(cuts) - 1
    if prompt_len(cuts[hi]) > room:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if prompt_len(cuts[mid]) <= room:
            hi = mid
        else:
            lo = mid + 1
    return cuts[lo]


def summarize(
    engine: Engine,
    history: list[dict[str, str]],
    sampling: SamplingSettings,
    stop: threading.Event | None = None,
) -> str:
    """Ask the model itself for a summary of `history` (system + the turns to compact).

    `stop` ends it like a reply (Cancelled): a summary cut short is not a summary.

    The prompt starts with the same rendered turns that are already in the KV cache, so
    llama.cpp's prefix reuse means only the instruction is prefilled, not the history.
    """
    limit = summary_tokens(engine.n_ctx)
    prompt = [*history, {"role": "user", "content": SUMMARY_INSTRUCTION}]
    if len(history) and history[-1]["role"] == "user":  # the last turn's reply was empty: keep roles alternating
        prompt = [*history[:-1], {"role": "user", "content": f"{history[-1]['content']}\n\n{SUMMARY_INSTRUCTION}"}]
    tokens = engine.chat_tokens(prompt)
    if len(tokens) + limit > engine.n_ctx:
        # The old turns alone overflow the context: summarize a condensed copy instead.
        tokens = engine.chat_tokens(_condensed(history, engine, engine.n_ctx - limit - 64))
    gen = engine.generate(tokens, SamplingSettings(max_tokens=limit, temperature=0.0, seed=sampling.seed), stop=stop)
    text = gen.run().strip()
    if gen.stats is not None and gen.stats.finish_reason == "cancelled":
        raise Cancelled("stopped during the summary")
    return text or "(earlier turns omitted)"


def _condensed(history: list[dict[str, str]], engine: Engine, budget: int) -> list[dict[str, str]]:
    lines = [f"{m['role']}: {m['content']}" for m in history if m["role"] != "system"]
    text = "\n".join(lines)
    while text and engine.count_tokens(text) > budget - 64:
        text = text[len(text) // 4 :]
    return [{"role": "user", "content": f"Conversation so far:\n{text}\n\n{SUMMARY_INSTRUCTION}"}]


def timed(fn: Callable[[], str]) -> tuple[str, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t
