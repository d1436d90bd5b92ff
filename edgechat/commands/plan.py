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
    flash,
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
    from ..rpc import connect, split_endpoints
    from .cache import plan_disk

    where = paths()
    d = load_defaults(where)
    g = parse_gpu_layers(gpu_layers if gpu_layers is not None else d.gpu_layers)
    fa = flash(flash_attn)
    resolved = resolve_model(model or d.model, where, download=False)
    servers = split_endpoints(rpc if rpc is not None else d.rpc)
    if servers:  # registered first: the plan places layers on their devices like on GPUs
        connect(servers, allow_public=rpc_allow_public, warn=notice)
    kv = kv_type or d.kv_type
    budget = budget_mb if budget_mb is not None else d.budget_mb
    p = make_plan(
        read_gguf(resolved.path), n_ctx=ctx if ctx is not None else d.ctx, type_k=k_type or kv,
        type_v=v_type or kv, flash_attn=fa, gpu_layers=g,  # type: ignore[arg-type]
        budget_bytes=budget * (1 << 20) if budget is not None else None, swa_full=swa_full,
    )  # fmt: skip
    disk, disk_text = plan_disk(where, state_budget_mb or d.state_budget_mb, p)
    if json_out:
        print(json.dumps({**asdict(p), "disk": disk}, default=str))
        return
    from rich.console import Console

    Console().print(format_plan(p))
    Console().print(disk_text)
