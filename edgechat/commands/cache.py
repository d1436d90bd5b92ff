"""`edgechat cache list|prune|stats`: the saved KV states on disk, and the disk part of `plan`.

The figures come from cache_report.py; this module prints them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import EdgechatError
from .common import GLOBALS, JsonOpt, guarded

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..config import Paths
    from ..planner import Plan
    from ..state_budget import DiskView


def register(app: typer.Typer) -> None:
    cache_app = typer.Typer(
        help="The saved KV states: list them, prune them, and what they saved.", no_args_is_help=True
    )
    cache_app.command("list")(cache_list)
    cache_app.command("prune")(cache_prune)
    cache_app.command("stats")(cache_stats)
    app.add_typer(cache_app, name="cache")


def _paths_and_budget() -> tuple[Paths, int | None]:
    from ..config import load_defaults, resolve_paths

    paths = resolve_paths(GLOBALS.home)
    return paths, load_defaults(paths).state_budget_mb


def _size(n: float) -> str:
    from ..state_budget import mib

    return mib(int(n))


def _model(spec: str | None) -> str:
    """A registry name as is, a file path as its file name's stem."""
    if spec is None:
        return "-"
    return Path(spec).stem if spec.endswith(".gguf") else spec


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


@guarded
def cache_list(json_out: JsonOpt = False) -> None:
    """Each conversation's saved state: model, tokens, KV type, size on disk, last use, and
    whether it loads with this llama.cpp build and model file."""

    from ..cache_report import list_states
    from ..store import Store

    paths, _budget = _paths_and_budget()
    entries = list_states(paths, Store(paths.db_path))
    if json_out:
        print(json.dumps([asdict(e) for e in entries]))
        return
    from rich.console import Console
    from rich.table import Table

    if not entries:
        Console().print("no saved states")
        return
    table = Table("id", "title", "model", "tokens", "KV", "on disk", "last used", "valid", box=None)
    for e in entries:
        table.add_row(
            e.id, (e.title or "-")[:30], _model(e.model), f"{e.tokens:,}", e.kv_type or "-", _size(e.bytes),
            _when(e.last_used), "yes" if e.valid else f"[yellow]no[/]: {e.problem}",
        )  # fmt: skip
    total = sum(e.bytes for e in entries)
    Console().print(table)
    Console().print(f"{len(entries)} states, {_size(total)} on disk", style="dim")


@guarded
def cache_prune(
    ids: Annotated[list[str] | None, typer.Argument(help="Conversation ids (or unique prefixes) to drop.")] = None,
    to_mb: Annotated[
        int | None, typer.Option("--to", help="Drop the least recently used states until they take at most MB MiB.")
    ] = None,
    older_than: Annotated[
        float | None, typer.Option("--older-than", help="Drop the states not used for DAYS days.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Drop saved states (their conversations stay; each resumes from its transcript once, with a
    notice). Without options: down to the state budget (state_budget_mb, or the default)."""

    from ..cache_report import budget_now, prune

    given = sum(x is not None and x != [] for x in (ids, to_mb, older_than))
    if given > 1:
        raise EdgechatError("give one of --to, --older-than or conversation ids", "run one prune per kind")
    if to_mb is not None and to_mb < 0:
        raise EdgechatError(f"--to {to_mb} is negative", "give the MiB the states may keep, 0 drops them all")
    if older_than is not None and older_than < 0:
        raise EdgechatError(f"--older-than {older_than} is negative", "give a number of days, e.g. 30")
    paths, budget_mb = _paths_and_budget()
    to_bytes = to_mb << 20 if to_mb is not None else None
    if not given:
        to_bytes = budget_now(paths, budget_mb)
    result = prune(paths, to_bytes=to_bytes, older_than_days=older_than, ids=ids or ())
    if json_out:
        print(json.dumps(asdict(result)))
        return
    import sys

    for cid in result.busy:
        print(f"note: kept the state of {cid}: a reply is running in it", file=sys.stderr)
    print(
        f"dropped {len(result.dropped)} states, {_size(result.freed_bytes)}; "
        f"{_size(result.bytes_after)} left (was {_size(result.bytes_before)})"
    )


@guarded
def cache_stats(json_out: JsonOpt = False) -> None:
    """What the saved states saved: restores by source, the tokens not prefilled again, and the
    prefill time that is at this machine's measured prefill rate."""

    from ..cache_report import stats
    from ..store import Store

    paths, budget_mb = _paths_and_budget()
    report = stats(paths, Store(paths.db_path), budget_mb)
    if json_out:
        print(json.dumps(asdict(report)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("supplied by", "turns", "tokens not prefilled", "restore time", box=None)
    for source, f in report.restores.items():
        table.add_row(
            source, str(f.turns), f"{f.tokens:,}" if f.tokens else "-", _seconds(f.restore_s) if f.turns else "-"
        )
    console = Console()
    console.print(table)
    saved = f"~{_seconds(report.prefill_saved_s)}" if report.prefill_rates else "not measured yet"
    console.print(
        f"{report.tokens_not_prefilled:,} tokens not prefilled again over {report.turns} turns; prefill time saved: {saved}"
    )
    for r in report.prefill_rates:
        console.print(f"  measured prefill: {r.model} ({r.kv_type}) {r.tokens_per_s:,.0f} tokens/s", style="dim")
    console.print(disk_lines(report.disk))


def disk_lines(d: DiskView) -> str:
    share = "" if d.budget_from == "state_budget_mb" else " (default: the smaller of 20 GiB and 10 % of free disk)"
    return (
        f"disk: {_size(d.free_bytes)} free of {_size(d.total_bytes)} at {d.states_dir}\n"
        f"saved states: {_size(d.states_bytes)} in {d.conversations} conversation{'' if d.conversations == 1 else 's'};"
        f" budget {_size(d.budget_bytes)}{share}"
    )


def plan_disk(paths: Paths, state_budget_mb: int | None, plan: Plan) -> tuple[dict[str, Any], RenderableType]:
    """`edgechat plan`'s view of the disk: free space, the state budget, what states take, and
    how many states of this plan's full context the budget holds."""
    from rich.text import Text

    from ..state import StateFiles
    from ..state_budget import disk_view

    d = disk_view(StateFiles(paths.states_dir), state_budget_mb)
    # The state file holds what the cache holds (an SWA model's window only), plus its checkpoints.
    full = plan.kv + plan.rs + plan.checkpoints * plan.checkpoint_bytes
    data = {
        **asdict(d),
        "full_context_state_bytes": full,
        "full_context_states_in_budget": d.budget_bytes // max(1, full),
    }
    text = Text(
        disk_lines(d) + f"\na full {plan.n_ctx:,}-token state takes up to {_size(full)}:"
        f" the budget holds {data['full_context_states_in_budget']:,} of them"
    )
    return data, text
