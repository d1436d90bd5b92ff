"""`edgechat plan`: the memory plan from the GGUF header, without loading the model."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from .common import (
    BudgetOpt,
    CtxOpt,
    FaOpt,
    GpuOpt,
    JsonOpt,
    KOpt,
    KvOpt,
    ModelOpt,
    RpcOpt,
    RpcPublicOpt,
    StateBudgetOpt,
    VOpt,
    engine_options,
    guarded,
    notice,
    paths,
)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)


@guarded
def plan(
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, budget_mb: BudgetOpt = None,
    swa_full: Annotated[bool, typer.Option("--swa-full/--no-swa-full", help="Full-size sliding-window cache (more memory; not needed for exact resume).")] = False,
    json_out: JsonOpt = False, rpc: RpcOpt = None, rpc_allow_public: RpcPublicOpt = False,
    state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """Predict memory use from the GGUF header and pick the largest context that fits; and the disk the saved states may take."""
    from ..config import load_defaults, parse_gpu_layers
    from ..gguf_info import read_gguf
    from ..planner import format_plan
    from ..planner import plan as make_plan
    from ..registry import resolve_model
    from ..rpc import connect
    from .cache import plan_disk

    where = paths()
    o = engine_options(
        model, ctx, kv_type, k_type, v_type, flash_attn, gpu_layers, budget_mb=budget_mb, rpc=rpc,
        rpc_allow_public=rpc_allow_public, state_budget_mb=state_budget_mb,
    ).over(load_defaults(where))  # fmt: skip
    resolved = resolve_model(o.model, where, download=False)
    if o.rpc:  # registered first: the plan places layers on their devices like on GPUs
        connect(o.rpc, allow_public=o.rpc_allow_public, warn=notice)
    p = make_plan(
        read_gguf(resolved.path), n_ctx=o.ctx, type_k=o.type_k, type_v=o.type_v, flash_attn=o.flash_attn,
        gpu_layers=parse_gpu_layers(o.gpu_layers),  # type: ignore[arg-type]
        budget_bytes=o.budget_mb * (1 << 20) if o.budget_mb is not None else None, swa_full=swa_full,
    )  # fmt: skip
    disk, disk_text = plan_disk(where, o.state_budget_mb, p)
    if json_out:
        print(json.dumps({**asdict(p), "disk": disk}, default=str))
        return
    from rich.console import Console

    Console().print(format_plan(p))
    Console().print(disk_text)
