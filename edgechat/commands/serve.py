"""`edgechat serve`: the OpenAI-compatible HTTP server (edgechat.serve) on one Runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    GLOBALS,
    BudgetOpt,
    CompactOpt,
    CtxOpt,
    FaOpt,
    GpuOpt,
    KOpt,
    KvOpt,
    ModelOpt,
    RpcOpt,
    RpcPublicOpt,
    StateBudgetOpt,
    ThreadsOpt,
    VOpt,
    engine_options,
    guarded,
    runtime,
)

if TYPE_CHECKING:
    from ..session import Runtime


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


@guarded
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free one, shown in the ready line).")] = 8080,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="EDGECHAT_API_KEY", help="Require Authorization: Bearer KEY.")
    ] = None,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait behind the one running (503 beyond).")] = 16,
    max_body_mb: Annotated[int, typer.Option("--max-body-mb", help="Largest request body, in MiB (413 beyond).")] = 8,
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, threads: ThreadsOpt = None, budget_mb: BudgetOpt = None,
    compaction: CompactOpt = None, rpc: RpcOpt = None, rpc_allow_public: RpcPublicOpt = False,
    state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """An OpenAI-compatible HTTP server; conversations resume from their saved KV cache."""
    from ..serve import ServeOptions, run_server

    options = ServeOptions(
        host=host, port=port, api_key=api_key, max_queue=queue, max_body_bytes=max_body_mb << 20,
        debug=GLOBALS.debug,
    )  # fmt: skip

    def make_runtime() -> Runtime:
        rt = runtime(
            engine_options(
                model,
                ctx,
                kv_type,
                k_type,
                v_type,
                flash_attn,
                gpu_layers,
                threads,
                budget_mb,
                compaction,
                rpc=rpc,
                rpc_allow_public=rpc_allow_public,
                state_budget_mb=state_budget_mb,
            )
        )
        # A server runs the model it was started with: a stored conversation's own model
        # does not switch it (a request's "model" field may, among the listed ones).
        rt.explicit_model = True
        return rt

    code = run_server(make_runtime, options)
    if code:
        raise typer.Exit(code)
