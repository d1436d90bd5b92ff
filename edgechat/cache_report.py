"""What `edgechat cache` reports: the saved states on disk, what pruning removes, what the cache saved.

The values are frozen dataclasses with the `--json` field names; the command module only
prints them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from .config import Paths
from .errors import EdgechatError, StateError
from .state import StateFiles, StateHeader, StateUsage, model_fingerprint
from .state_budget import DiskView, budget_bytes, disk_space, disk_view, drop_states, victims
from .store import Store

# The sources that mean a turn did not prefill its history again.
RESTORED = ("memory", "state", "checkpoint")
SOURCES = ("new", "memory", "state", "checkpoint", "transcript")


@dataclass(frozen=True)
class StateEntry:
    """One conversation's saved state, as `cache list` shows it."""

    id: str
    title: str | None  # None: no conversation has this id any more
    model: str | None
    tokens: int
    kv_type: str
    bytes: int  # every file on disk: header, payload and checkpoints
    checkpoints: int
    last_used: float  # the last save or restore
    llama_build: str
    valid: bool  # it loads for the current llama.cpp build and the conversation's model file
    problem: str | None  # why it is not valid (None when it is)


@dataclass(frozen=True)
class PruneResult:
    dropped: list[dict[str, object]]  # {"id", "bytes"}
    busy: list[str]  # in a turn in some process: kept
    freed_bytes: int
    bytes_before: int
    bytes_after: int


@dataclass(frozen=True)
class SourceFigures:
    turns: int = 0
    tokens: int = 0  # prompt tokens the cache already held
    restore_s: float = 0.0


@dataclass(frozen=True)
class PrefillRate:
    model: str
    kv_type: str
    tokens_per_s: float


@dataclass(frozen=True)
class CacheStats:
    """`cache stats`: restores by source, the tokens they spared a prefill, and its time."""

    turns: int
    restores: dict[str, SourceFigures]
    tokens_not_prefilled: int
    prefill_saved_s: float  # at each model's measured rate; tokens of a model with no rate yet count 0
    tokens_without_rate: int
    prefill_rates: list[PrefillRate]
    disk: DiskView


def list_states(paths: Paths, store: Store) -> list[StateEntry]:
    """Every conversation with files in the states dir, most recently used first."""
    from .engine import llama_build

    files = StateFiles(paths.states_dir)
    build = llama_build()
    fingerprints: dict[str, str | None] = {}
    out = []
    for u in files.usage().values():
        header: StateHeader | None = None
        problem: str | None = None
        try:
            header = files.read_header(u.cid, missing_ok=True)
        except StateError as exc:
            problem = exc.message
        try:
            record = store.conversation(u.cid)
        except EdgechatError:
            record = None
        if record is not None and record.id != u.cid:
            record = None  # a prefix match of another conversation
        if header is None:
            problem = problem or "an unfinished save (no header): never used, removed by a prune"
        elif record is None:
            problem = "its conversation was deleted"
        else:
            if record.model not in fingerprints:
                fingerprints[record.model] = _fingerprint(record.model, paths)
            fp = fingerprints[record.model]
            if fp is None:
                problem = f"its model {record.model} is not downloaded"
            elif fp != header.model_fingerprint:
                problem = "saved with another model file"
            elif header.llama_build != build:
                problem = f"saved by {header.llama_build}: it is tried, and rebuilt if llama.cpp refuses it"
        out.append(
            StateEntry(
                id=u.cid,
                title=record.title if record is not None else None,
                model=record.model if record is not None else None,
                tokens=len(header.tokens) if header else 0,
                kv_type=_kv(header) if header else "",
                bytes=u.bytes,
                checkpoints=len(header.checkpoints) if header else 0,
                last_used=u.last_used,
                llama_build=header.llama_build if header else "",
                valid=problem is None,
                problem=problem,
            )
        )
    return sorted(out, key=lambda e: e.last_used, reverse=True)


def _kv(h: StateHeader) -> str:
    return h.type_k if h.type_k == h.type_v else f"{h.type_k}/{h.type_v}"


def _fingerprint(spec: str, paths: Paths) -> str | None:
    from .registry import resolve_model

    try:
        return model_fingerprint(resolve_model(spec, paths, download=False).path, paths.fingerprint_cache)
    except (EdgechatError, OSError):
        return None


def prune(
    paths: Paths,
    *,
    to_bytes: int | None = None,
    older_than_days: float | None = None,
    ids: Sequence[str] = (),
) -> PruneResult:
    """Drop saved states: the least recently used down to `to_bytes`, those unused for
    `older_than_days`, or the given conversations' (an id or a unique prefix of one)."""
    files = StateFiles(paths.states_dir)
    usage = files.usage()
    before = sum(u.bytes for u in usage.values())
    chosen: list[StateUsage]
    if ids:
        chosen = [usage[_match(cid, usage)] for cid in dict.fromkeys(ids)]
    elif older_than_days is not None:
        cutoff = time.time() - older_than_days * 86400
        chosen = [u for u in usage.values() if u.last_used < cutoff]
    else:
        assert to_bytes is not None
        chosen = victims(usage, None, 0, to_bytes)
    dropped, busy = drop_states(files, paths.data_dir / "locks", chosen, "removed by `edgechat cache prune`")
    freed = sum(u.bytes for u in dropped)
    return PruneResult(
        dropped=[{"id": u.cid, "bytes": u.bytes} for u in dropped],
        busy=busy,
        freed_bytes=freed,
        bytes_before=before,
        bytes_after=sum(u.bytes for u in files.usage().values()),
    )


def _match(given: str, usage: dict[str, StateUsage]) -> str:
    if given in usage:
        return given
    found = [cid for cid in usage if cid.startswith(given)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise EdgechatError(f"no saved state for {given!r}", "list them with `edgechat cache list`")
    raise EdgechatError(f"{given!r} matches {len(found)} saved states", "give more of the id")


def budget_now(paths: Paths, state_budget_mb: int | None) -> int:
    """The budget as a save would compute it now."""
    files = StateFiles(paths.states_dir)
    free, _total = disk_space(files.dir)
    return budget_bytes(state_budget_mb, free, sum(u.bytes for u in files.usage().values()))[0]


def stats(paths: Paths, store: Store, state_budget_mb: int | None) -> CacheStats:
    uses = store.cache_uses()
    restores = {s: SourceFigures() for s in SOURCES}
    rates: dict[tuple[str, str], float | None] = {}
    saved = 0.0
    without = 0
    for u in uses:
        cur = restores.get(u.source, SourceFigures())
        restores[u.source] = SourceFigures(
            cur.turns + u.turns, cur.tokens + u.reused_tokens, cur.restore_s + u.restore_s
        )
        if u.source not in RESTORED:
            continue
        key = (u.model, u.kv_type)
        if key not in rates:
            rates[key] = store.prefill_rate(*key)
        rate = rates[key]
        if rate:
            saved += u.reused_tokens / rate
        else:
            without += u.reused_tokens
    return CacheStats(
        turns=sum(u.turns for u in uses),
        restores=restores,
        tokens_not_prefilled=sum(restores[s].tokens for s in RESTORED),
        prefill_saved_s=saved,
        tokens_without_rate=without,
        prefill_rates=[PrefillRate(m, k, r) for (m, k), r in sorted(rates.items()) if r],
        disk=disk_view(StateFiles(paths.states_dir), state_budget_mb),
    )
