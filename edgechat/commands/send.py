"""`edgechat send`: one turn of a saved conversation, stored as it streams."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from ..errors import EdgechatError
from .common import (
    BudgetOpt,
    CompactOpt,
    CtxOpt,
    DryOpt,
    FaOpt,
    GpuOpt,
    JsonOpt,
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
    read_stdin,
    runtime,
    say_finish,
    silence_stdout,
    stream_out,
)


def register(app: typer.Typer) -> None:
    app.command("send")(send)


@guarded
def send(
    message: Annotated[
        str | None, typer.Argument(help="The message ('-' reads it from stdin; with --regenerate: the edited last message).")
    ] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new conversation.")] = False,
    conversation: Annotated[str | None, typer.Option("--conversation", "-c", help="Continue conversation ID.")] = None,
    cont: Annotated[bool, typer.Option("--continue", help="Continue the most recent conversation.")] = False,
    regenerate: Annotated[
        bool, typer.Option("--regenerate", help="Answer the last message again (the old reply stays stored, marked replaced).")
    ] = False,
    system: Annotated[
        str | None, typer.Option("--system", help="System prompt (with -c/--continue: changes the conversation's).")
    ] = None,
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, threads: ThreadsOpt = None, budget_mb: BudgetOpt = None,
    compaction: CompactOpt = None, max_tokens: MaxTokOpt = None, temperature: TempOpt = None, seed: SeedOpt = None,
    json_out: JsonOpt = False, repeat_penalty: RepeatOpt = None, dry_multiplier: DryOpt = None,
    loop_guard: LoopGuardOpt = None, rpc: RpcOpt = None, rpc_allow_public: RpcPublicOpt = False,
    state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """One turn of a saved conversation (new, by id, or the latest).

    The message is stored before the model starts and the reply as it streams: Ctrl-C, SIGTERM,
    SIGHUP, a closed pipe, even a killed process keep both (the reply marked partial).
    """
    from ..shutdown import stop_on_signals

    if sum([new, conversation is not None, cont]) != 1:
        raise EdgechatError("say which conversation", "use exactly one of --new, -c ID or --continue")
    if regenerate and new:
        raise EdgechatError("--regenerate needs a conversation with a reply", "use it with -c ID or --continue")
    if message is None and not regenerate:
        raise EdgechatError("no message given", 'pass it as an argument, or "-" to read it from stdin')
    text = (read_stdin() if message == "-" else message) or ""
    with (
        runtime(
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
        ) as rt,
        stop_on_signals(exit=False) as sig,
    ):
        if new:
            conv = rt.new_conversation(system_prompt=system, model=model, deferred=True)
        else:
            found = rt.conversation(conversation) if conversation is not None else rt.latest()
            if found is None:
                raise EdgechatError(
                    "there is no conversation to continue", "start one with: edgechat send --new MESSAGE"
                )
            conv = found
            if system is not None:
                conv.set_system_prompt(system)
        options: dict[str, Any] = dict(
            max_tokens=max_tokens, temperature=temperature, seed=seed, stop=sig.event,
            repeat_penalty=repeat_penalty, dry_multiplier=dry_multiplier, loop_guard=loop_guard,
        )  # fmt: skip
        turn = conv.regenerate(text, **options) if regenerate else conv.stream(text, **options)
        if json_out:
            print(json.dumps(turn.run().to_json()))
        else:
            try:
                stream_out(iter(turn))
            except KeyboardInterrupt:
                turn.close()  # stores the partial reply before we exit
                raise
            except BrokenPipeError:
                # `send ... | head`: the reader left. Keep the turn (partial), then fail like SIGPIPE.
                silence_stdout()
                turn.close("interrupted")
                print("error: the output was closed; the reply is stored as partial", file=sys.stderr)
                raise typer.Exit(141) from None
            st = turn.run().stats  # the turn has ended: its Reply
            print(
                f"[{st.conversation_id} · {st.restored_from} · ttft {st.ttft_s:.2f}s · "
                f"{st.decode_tokens_per_s:.1f} tok/s · {st.context_tokens}/{st.context_limit} tokens"
                f"{' · compacted' if st.compacted else ''}]",
                file=sys.stderr,
            )
            say_finish(st.finish_reason)
    if sig.signum is not None:
        print(f"stopped by signal {sig.signum}; the reply is stored as partial", file=sys.stderr)
        raise typer.Exit(sig.exit_code)
