"""`edgechat chat`: the terminal chat UI (the Textual app loads only here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    BudgetOpt,
    CompactOpt,
    CtxOpt,
    DryOpt,
    FaOpt,
    GpuOpt,
    KOpt,
    KvOpt,
    LoopGuardOpt,
    MaxTokOpt,
    ModelOpt,
    RepeatOpt,
    RpcOpt,
    RpcPublicOpt,
    SeedOpt,
    StateBudgetOpt,
    TempOpt,
    ThreadsOpt,
    VOpt,
    engine_options,
    guarded,
    runtime,
)

if TYPE_CHECKING:
    from ..session import Runtime


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


@guarded
def chat(
    conversation: Annotated[str | None, typer.Option("--conversation", "-c", help="Open conversation ID.")] = None,
    cont: Annotated[bool, typer.Option("--continue", help="Reopen the most recent conversation.")] = False,
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, threads: ThreadsOpt = None, budget_mb: BudgetOpt = None,
    compaction: CompactOpt = None, max_tokens: MaxTokOpt = None, temperature: TempOpt = None, seed: SeedOpt = None,
    repeat_penalty: RepeatOpt = None, dry_multiplier: DryOpt = None, loop_guard: LoopGuardOpt = None,
    rpc: RpcOpt = None, rpc_allow_public: RpcPublicOpt = False, state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """The terminal chat UI."""
    from ..tui.app import run_app

    options: dict[str, Any] = dict(
        model=model, ctx=ctx, kv_type=kv_type, k_type=k_type, v_type=v_type, flash_attn=flash_attn,
        gpu_layers=gpu_layers, threads=threads, budget_mb=budget_mb, compaction=compaction,
        rpc=rpc, rpc_allow_public=rpc_allow_public, state_budget_mb=state_budget_mb,
    )  # fmt: skip
    sampling = dict(
        max_tokens=max_tokens, temperature=temperature, seed=seed, repeat_penalty=repeat_penalty,
        dry_multiplier=dry_multiplier, loop_guard=loop_guard,
    )  # fmt: skip

    def make(notice: Callable[[str], None]) -> Runtime:
        rt = runtime(engine_options(**options), sampling=sampling, on_notice=notice)
        first = not rt.store.conversations("")  # a first chat, on the default model: is there a better one?
        if first and model is None and not rt.defaults.model and not conversation and not cont:
            from ..fit import suggest_in_background

            suggest_in_background(rt.paths, budget_mb, notice)
        return rt

    code = run_app(make, conversation=conversation, cont=cont)
    if code:
        raise typer.Exit(code)
