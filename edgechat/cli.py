"""`edgechat`: thin commands over the turn pipeline; text, rich tables or one JSON object."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import EdgechatError

app = typer.Typer(
    name="edgechat",
    help="Local chat with GGUF models: instant resume from a saved KV cache, memory-budget planning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
conversations_app = typer.Typer(help="List, show, export, rename and delete saved conversations.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list, pull (download), info (GGUF metadata).", no_args_is_help=True)
app.add_typer(conversations_app, name="conversations")
app.add_typer(models_app, name="models")

_state: dict[str, Any] = {"home": None, "debug": False}

# Engine and sampling options, shared by every command that loads a model.
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Registry name, owner/repo/file.gguf, or a local path.")
]
CtxOpt = Annotated[
    int | None, typer.Option("--ctx", help="Context length in tokens (default: the largest the budget allows).")
]
KvOpt = Annotated[str | None, typer.Option("--kv-type", help="KV cache type for K and V: f16, q8_0 or q4_0.")]
KOpt = Annotated[str | None, typer.Option("--k-type", help="K cache type alone (overrides --kv-type).")]
VOpt = Annotated[str | None, typer.Option("--v-type", help="V cache type alone (overrides --kv-type).")]
FaOpt = Annotated[str | None, typer.Option("--flash-attn", help="on, off or auto (on when the V cache is quantized).")]
GpuOpt = Annotated[str | None, typer.Option("--gpu-layers", help="auto or a number of layers to offload (-1: all).")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads, pinned (default: chosen per turn from the machine's load)."),
]
BudgetOpt = Annotated[
    int | None,
    typer.Option("--budget-mb", help="Memory the runtime may use, in MiB (default: a safe share of what is free)."),
]
StateBudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--state-budget-mb", help="Disk the saved KV states may take, in MiB (default: 20 GiB or 10 % of free disk)."
    ),
]
CompactOpt = Annotated[
    str | None, typer.Option("--compaction", help="When the context is full: summarize, truncate or off.")
]
MaxTokOpt = Annotated[int | None, typer.Option("--max-tokens", help="Longest reply, in tokens.")]
TempOpt = Annotated[float | None, typer.Option("--temperature", help="0 is greedy and reproducible.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Sampling seed.")]
RepeatOpt = Annotated[
    float | None, typer.Option("--repeat-penalty", help="Penalty on tokens of the last 64 (1 is off; default 1.1).")
]
DryOpt = Annotated[
    float | None,
    typer.Option("--dry-multiplier", help="llama.cpp's DRY anti-repetition sampler (0 is off, 0.8 typical)."),
]
LoopGuardOpt = Annotated[
    bool | None,
    typer.Option(
        "--loop-guard/--no-loop-guard", help="End a reply that repeats one span 3 times in a row (default on)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else on stdout.")]


def _notice(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def _fail(exc: BaseException) -> None:
    if _state["debug"]:
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(1)


def _flash(value: str | None) -> bool | None:
    if value in (None, "auto"):
        return None
    if value in ("on", "true", "1"):
        return True
    if value in ("off", "false", "0"):
        return False
    raise EdgechatError(f"--flash-attn {value!r} is not on, off or auto", "use --flash-attn on|off|auto")


def _options(
    model: str | None = None,
    ctx: int | None = None,
    kv_type: str | None = None,
    k_type: str | None = None,
    v_type: str | None = None,
    flash_attn: str | None = None,
    gpu_layers: str | None = None,
    threads: int | None = None,
    budget_mb: int | None = None,
    compaction: str | None = None,
    state_budget_mb: int | None = None,
) -> Any:
    """The engine options as the command line gave them (one value, checked, for the Runtime)."""
    from .config import EngineOptions

    return EngineOptions().given(
        model=model, ctx=ctx, kv_type=kv_type, type_k=k_type, type_v=v_type, flash_attn=_flash(flash_attn),
        gpu_layers=gpu_layers, threads=threads, budget_mb=budget_mb, compaction=compaction,
        state_budget_mb=state_budget_mb,
    )  # fmt: skip


def _runtime(options: Any, on_notice: Callable[[str], None] = _notice, sampling: dict[str, Any] | None = None) -> Any:
    from .session import Runtime

    return Runtime(options=options, home=_state["home"], on_notice=on_notice, sampling=sampling)


def _read_stdin() -> str:
    """All of stdin as text; bytes that are not UTF-8 are a one-line error, not a traceback."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgechatError(
            f"the input is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})",
            "convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8",
        ) from None


def _say_finish(finish_reason: str) -> None:
    """A reply the loop guard ended says so on stderr (stdout holds only the reply)."""
    if finish_reason == "repetition":
        print(
            "note: reply stopped: it kept repeating itself (finish_reason: repetition; --no-loop-guard lets it run)",
            file=sys.stderr,
        )


def _stream_out(pieces: Iterator[str]) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def _guard(fn: Callable[[], None]) -> None:
    """Run a command body: core errors become one line, Ctrl-C exits 130, never a traceback."""
    try:
        fn()
    except EdgechatError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(141) from None  # like a process killed by SIGPIPE


@app.callback()
def _main(
    home: Annotated[
        Path | None, typer.Option("--home", help="Data directory (default: $EDGECHAT_HOME or the user data dir).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and llama.cpp's log.")] = False,
) -> None:
    _state["home"] = str(home) if home else None
    _state["debug"] = debug
    if debug:
        os.environ["EDGECHAT_DEBUG"] = "1"


# generate -----------------------------------------------------------------------------


@app.command()
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt ('-' or omitted: read from stdin).")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")] = False,
    batch: Annotated[Path | None, typer.Option("--batch", help="JSONL file of prompts; one JSON line out per prompt.")] = None,
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, threads: ThreadsOpt = None, budget_mb: BudgetOpt = None,
    max_tokens: MaxTokOpt = None, temperature: TempOpt = None, seed: SeedOpt = None, json_out: JsonOpt = False,
    repeat_penalty: RepeatOpt = None, dry_multiplier: DryOpt = None, loop_guard: LoopGuardOpt = None,
) -> None:  # fmt: skip
    """One stateless completion, streamed to stdout."""

    def body() -> None:
        if batch is None:
            text = prompt
            if text is None or text == "-":  # "-" reads stdin, as `send -` does
                if text is None and sys.stdin.isatty():
                    raise EdgechatError(
                        "no prompt given", 'pass it as an argument or pipe it in: echo "hi" | edgechat generate'
                    )
                text = _read_stdin()
            if not text.strip():
                raise EdgechatError("the prompt is empty", "give a prompt to complete")
        from .shutdown import stop_on_signals

        with (
            _runtime(_options(model, ctx, kv_type, k_type, v_type, flash_attn, gpu_layers, threads, budget_mb)) as rt,
            stop_on_signals(exit=False) as sig,
        ):
            sampling = rt.sampling(
                max_tokens=max_tokens, temperature=temperature, seed=seed, repeat_penalty=repeat_penalty,
                dry_multiplier=dry_multiplier, loop_guard=loop_guard,
            )  # fmt: skip
            if batch is not None:
                _run_batch(rt, batch, system, raw, sampling, sig)
            else:
                stream = rt.generate(text, system=system, raw=raw, sampling=sampling, stop=sig.event)
                if json_out:
                    print(json.dumps(asdict(stream.run())))
                else:
                    _stream_out(iter(stream))
                    _say_finish(stream.result.finish_reason if stream.result else "")
        if sig.signum is not None:
            print(f"stopped by signal {sig.signum}", file=sys.stderr)
            raise typer.Exit(sig.exit_code)

    _guard(body)


def _run_batch(rt: Any, path: Path, system: str | None, raw: bool, sampling: Any, sig: Any) -> None:
    """One JSON line out per prompt line in; a bad line gets its own {"error"} and the batch goes on.
    A SIGTERM/SIGHUP ends the running completion (its line says finish_reason "cancelled") and
    the batch; the lines already printed are complete."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise EdgechatError(f"cannot read {path}: {exc.strerror}", "check the --batch path") from exc
    failed = 0
    for n, raw_line in enumerate(lines, 1):
        if not raw_line.strip():
            continue
        try:
            item = _batch_item(path, n, raw_line, system, raw)
            result = rt.generate(
                item["prompt"],
                system=item["system"],
                raw=item["raw"],
                sampling=_batch_sampling(path, n, item, sampling),
                stop=sig.event,
            ).run()
            out = {"line": n, **({"id": item["id"]} if "id" in item else {}), **asdict(result)}
        except EdgechatError as exc:
            failed += 1
            out = {"line": n, "error": str(exc)}
        print(json.dumps(out), flush=True)
        if sig.signum is not None:
            return
    if failed:
        print(f'error: {failed} of the prompts failed (see their "error" lines)', file=sys.stderr)
        raise typer.Exit(1)


_BATCH_HINT = 'see README: generate --batch; a line is {"prompt": "...", "max_tokens": 64, ...}'


def _batch_item(path: Path, n: int, raw_line: bytes, system: str | None, raw: bool) -> dict[str, Any]:
    """Parse and type-check one --batch line (EdgechatError names the line and the field)."""
    where = f"{path}:{n}"
    try:
        item = json.loads(raw_line.decode("utf-8"))
    except UnicodeDecodeError:
        raise EdgechatError(f"{where}: not valid UTF-8", "save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise EdgechatError(f"{where}: not JSON ({exc.msg})", _BATCH_HINT) from None
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise EdgechatError(f'{where}: each line needs a "prompt" string', _BATCH_HINT)
    if not item["prompt"].strip():
        raise EdgechatError(f"{where}: the prompt is empty", "give each line a prompt to complete")
    item.setdefault("system", system)
    item.setdefault("raw", raw)
    if item["system"] is not None and not isinstance(item["system"], str):
        raise EdgechatError(f'{where}: "system" must be a string', _BATCH_HINT)
    if not isinstance(item["raw"], bool):
        raise EdgechatError(f'{where}: "raw" must be true or false', _BATCH_HINT)
    return item


def _batch_sampling(path: Path, n: int, item: dict[str, Any], sampling: Any) -> Any:
    from dataclasses import replace

    checks = {
        "max_tokens": (lambda v: _is_int(v) and v > 0, "a whole number above 0"),
        "temperature": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
        "seed": (_is_int, "a whole number"),
    }
    for key, (ok, what) in checks.items():
        if key in item and not ok(item[key]):
            raise EdgechatError(f'{path}:{n}: "{key}" is {json.dumps(item[key])}, not {what}', _BATCH_HINT)
    return replace(sampling, **{k: item[k] for k in checks if k in item})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# send -----------------------------------------------------------------------------------


@app.command()
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
    loop_guard: LoopGuardOpt = None, state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """One turn of a saved conversation (new, by id, or the latest).

    The message is stored before the model starts and the reply as it streams: Ctrl-C, SIGTERM,
    SIGHUP, a closed pipe, even a killed process keep both (the reply marked partial).
    """

    def body() -> None:
        from .shutdown import stop_on_signals

        if sum([new, conversation is not None, cont]) != 1:
            raise EdgechatError("say which conversation", "use exactly one of --new, -c ID or --continue")
        if regenerate and new:
            raise EdgechatError("--regenerate needs a conversation with a reply", "use it with -c ID or --continue")
        if message is None and not regenerate:
            raise EdgechatError("no message given", 'pass it as an argument, or "-" to read it from stdin')
        text = (_read_stdin() if message == "-" else message) or ""
        engine_options = _options(
            model, ctx, kv_type, k_type, v_type, flash_attn, gpu_layers, threads, budget_mb, compaction, state_budget_mb
        )  # fmt: skip
        with (
            _runtime(engine_options) as rt,
            stop_on_signals(exit=False) as sig,
        ):
            if new:
                conv = rt.new_conversation(system_prompt=system, model=model, deferred=True)
            else:
                conv = rt.conversation(conversation) if conversation is not None else rt.latest()
                if conv is None:
                    raise EdgechatError(
                        "there is no conversation to continue", "start one with: edgechat send --new MESSAGE"
                    )
                if system is not None:
                    conv.set_system_prompt(system)
            options: dict[str, Any] = dict(
                max_tokens=max_tokens, temperature=temperature, seed=seed, stop=sig.event,
                repeat_penalty=repeat_penalty, dry_multiplier=dry_multiplier, loop_guard=loop_guard,
            )  # fmt: skip
            turn = conv.regenerate(text, **options) if regenerate else conv.stream(text, **options)
            if json_out:
                turn.run()
                print(json.dumps(turn.reply.to_json()))
            else:
                try:
                    _stream_out(iter(turn))
                except KeyboardInterrupt:
                    turn.close()  # stores the partial reply before we exit
                    raise
                except BrokenPipeError:
                    # `send ... | head`: the reader left. Keep the turn (partial), then fail like SIGPIPE.
                    _silence_stdout()
                    turn.close("interrupted")
                    print("error: the output was closed; the reply is stored as partial", file=sys.stderr)
                    raise typer.Exit(141) from None
                st = turn.reply.stats
                print(
                    f"[{st.conversation_id} · {st.restored_from} · ttft {st.ttft_s:.2f}s · "
                    f"{st.decode_tokens_per_s:.1f} tok/s · {st.context_tokens}/{st.context_limit} tokens"
                    f"{' · compacted' if st.compacted else ''}]",
                    file=sys.stderr,
                )
                _say_finish(st.finish_reason)
        if sig.signum is not None:
            print(f"stopped by signal {sig.signum}; the reply is stored as partial", file=sys.stderr)
            raise typer.Exit(sig.exit_code)

    _guard(body)


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so the exit's flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# chat -----------------------------------------------------------------------------------


@app.command()
def chat(
    conversation: Annotated[str | None, typer.Option("--conversation", "-c", help="Open conversation ID.")] = None,
    cont: Annotated[bool, typer.Option("--continue", help="Reopen the most recent conversation.")] = False,
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, threads: ThreadsOpt = None, budget_mb: BudgetOpt = None,
    compaction: CompactOpt = None, max_tokens: MaxTokOpt = None, temperature: TempOpt = None, seed: SeedOpt = None,
    repeat_penalty: RepeatOpt = None, dry_multiplier: DryOpt = None, loop_guard: LoopGuardOpt = None,
    state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """The terminal chat UI."""

    def body() -> None:
        from .tui.app import run_app

        options: dict[str, Any] = dict(
            model=model, ctx=ctx, kv_type=kv_type, k_type=k_type, v_type=v_type, flash_attn=flash_attn,
            gpu_layers=gpu_layers, threads=threads, budget_mb=budget_mb, compaction=compaction,
            state_budget_mb=state_budget_mb,
        )  # fmt: skip
        sampling = dict(
            max_tokens=max_tokens, temperature=temperature, seed=seed, repeat_penalty=repeat_penalty,
            dry_multiplier=dry_multiplier, loop_guard=loop_guard,
        )  # fmt: skip

        def make(notice: Callable[[str], None]) -> Any:
            rt = _runtime(_options(**options), sampling=sampling, on_notice=notice)
            first = not rt.store.conversations("")  # a first chat, on the default model: is there a better one?
            if first and model is None and not rt.defaults.model and not conversation and not cont:
                from .fit import suggest_in_background

                suggest_in_background(rt.paths, budget_mb, notice)
            return rt

        code = run_app(make, conversation=conversation, cont=cont)
        if code:
            raise typer.Exit(code)

    _guard(body)


# serve ----------------------------------------------------------------------------------


@app.command()
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
    compaction: CompactOpt = None, state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """An OpenAI-compatible HTTP server; conversations resume from their saved KV cache."""

    def body() -> None:
        from .serve import ServeOptions, run_server

        options = ServeOptions(
            host=host, port=port, api_key=api_key, max_queue=queue, max_body_bytes=max_body_mb << 20,
            debug=_state["debug"],
        )  # fmt: skip

        def make_runtime() -> Any:
            rt = _runtime(
                _options(
                    model, ctx, kv_type, k_type, v_type, flash_attn, gpu_layers, threads, budget_mb, compaction,
                    state_budget_mb,
                )
            )  # fmt: skip
            # A server runs the model it was started with: a stored conversation's own model
            # does not switch it (a request's "model" field may, among the listed ones).
            rt.explicit_model = True
            return rt

        code = run_server(make_runtime, options)
        if code:
            raise typer.Exit(code)

    _guard(body)


# conversations --------------------------------------------------------------------------


def _store() -> Any:
    from .config import resolve_paths
    from .store import Store

    return Store(resolve_paths(_state["home"]).db_path)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@conversations_app.command("list")
def conversations_list(
    search: Annotated[str, typer.Option("--search", "-s", help="Only titles containing this.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Saved conversations, most recent first."""

    def body() -> None:
        items = _store().conversations(search)
        if json_out:
            print(json.dumps([asdict(c) for c in items]))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("id", "title", "model", "messages", "tokens", "updated", box=None)
        for c in items:
            table.add_row(c.id, c.title, c.model, str(c.message_count), str(c.token_count), _when(c.updated_at))
        Console().print(table if items else 'no conversations yet: edgechat send --new "hello"')

    _guard(body)


@conversations_app.command("show")
def conversations_show(conversation_id: str, json_out: JsonOpt = False) -> None:
    """Every message of a conversation, compacted ones included."""

    def body() -> None:
        store = _store()
        rec = store.conversation(conversation_id)
        msgs = store.messages(rec.id)
        if json_out:
            print(json.dumps({"conversation": asdict(rec), "messages": [asdict(m) for m in msgs]}))
            return
        print(f"# {rec.title}  ({rec.id}, {rec.model})")
        for m in msgs:
            tags = [
                t
                for t, on in (
                    ("summary", m.kind == "summary"), ("compacted", m.compacted), ("replaced", m.replaced),
                    (m.reason or "stopped", m.partial),
                )
                if on
            ]  # fmt: skip
            print(f"\n[{m.role}{' · ' + ', '.join(tags) if tags else ''}]\n{m.content}")

    _guard(body)


@conversations_app.command("export")
def conversations_export(
    conversation_id: str,
    fmt: Annotated[str, typer.Option("--format", "-f", help="md or json.")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
) -> None:
    """Export a conversation to Markdown or JSON."""

    def body() -> None:
        from .export import to_json, to_markdown

        store = _store()
        rec = store.conversation(conversation_id)
        msgs = store.messages(rec.id)
        if fmt not in ("md", "json"):
            raise EdgechatError(f"unknown format {fmt!r}", "use --format md or --format json")
        text = to_markdown(rec, msgs) if fmt == "md" else to_json(rec, msgs)
        if output is None:
            sys.stdout.write(text)
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise EdgechatError(
                    f"cannot write {output}: {exc.strerror or exc}", "check that its directory exists and is writable"
                ) from None
            print(f"wrote {output}", file=sys.stderr)

    _guard(body)


@conversations_app.command("rename")
def conversations_rename(conversation_id: str, title: str) -> None:
    """Give a conversation a new title."""

    def body() -> None:
        store = _store()
        rec = store.conversation(conversation_id)
        store.rename(rec.id, title)

    _guard(body)


@conversations_app.command("delete")
def conversations_delete(
    conversation_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a conversation, its messages and its saved state."""

    def body() -> None:
        from .config import resolve_paths
        from .lock import ConversationLock
        from .state import StateFiles

        store = _store()
        rec = store.conversation(conversation_id)
        if (
            not yes
            and sys.stdin.isatty()
            and not typer.confirm(f"delete {rec.id} ({rec.title!r}, {rec.message_count} messages)?")
        ):
            raise typer.Exit(1)
        paths = resolve_paths(_state["home"])
        with ConversationLock(paths.data_dir / "locks", rec.id, timeout_s=5) as lock:
            store.delete_conversation(rec.id)
            StateFiles(paths.states_dir).delete(rec.id)
            lock.discard()
        print(f"deleted {rec.id}", file=sys.stderr)

    _guard(body)


# models ---------------------------------------------------------------------------------


@models_app.command("list")
def models_list(budget_mb: BudgetOpt = None, json_out: JsonOpt = False) -> None:
    """Models in the registry, whether they are downloaded, and whether they fit this machine's free memory."""

    def body() -> None:
        from .config import resolve_paths
        from .fit import fits_table
        from .registry import Registry, list_models

        paths = resolve_paths(_state["home"])
        registry = Registry.load(paths)
        rows = list_models(registry, paths, fits_table(registry, paths, (budget_mb or 0) * (1 << 20) or None))
        if json_out:
            print(json.dumps(rows, default=str))
            return
        from rich.console import Console
        from rich.table import Table

        cells = []
        estimated = False
        for r in rows:
            estimated = estimated or bool(r.get("fit_estimated"))
            cells.append([
                str(r.get("name")) + (" *" if r.get("default") else ""), str(r.get("quant", "")),
                "yes" if r.get("downloaded") else "", str(r.get("fit", "")),
                f"{r['fit_context']:,}" if r.get("fit_context") else "-",
                _size(r.get("download_bytes"), bool(r.get("download_estimated"))), str(r.get("note", "")),
            ])  # fmt: skip
        console = Console()
        heads = ("name", "quant", "here", "fit", "context", "download")
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)] if cells else []
        room = max(12, console.width - sum(widths) - 2 * (len(heads) + 1))
        table = Table(*heads, "note", box=None)
        style = {"fits": "green", "tight": "yellow", "too big": "red"}
        for c in cells:  # the note takes what is left of the line, so a row stays one line
            c[6] = c[6] if len(c[6]) <= room else c[6][: room - 1] + "…"
            c[3] = f"[{style[c[3]]}]{c[3]}[/]" if c[3] in style else c[3]
            table.add_row(*c)
        console.print(table)
        console.print(
            "* the default model.  fit: for "
            + (f"a budget of {budget_mb:,} MiB" if budget_mb else "the memory free now")
            + "; context: the tokens it would get"
            + ("; ~ and models not downloaded: estimated from models.toml, not the GGUF header" if estimated else ""),
            style="dim",
        )

    _guard(body)


def _size(n: Any, estimated: bool) -> str:
    if not isinstance(n, int):
        return "?"
    return f"{'~' if estimated else ''}{n / 1e9:.2f} GB" if n >= 1e9 else f"{'~' if estimated else ''}{n / 1e6:.0f} MB"


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Registry name (name:quant) or owner/repo/file.gguf.")],
    quant: Annotated[str | None, typer.Option("--quant", help="Quantization to fetch.")] = None,
) -> None:
    """Download a model (resumable, checksum-verified)."""

    def body() -> None:
        from .config import private_dir, resolve_paths
        from .registry import pull

        paths = resolve_paths(_state["home"])
        private_dir(paths.data_dir)  # a pull may be the first thing to create it
        path = pull(name, paths, quant=quant)
        print(path)

    _guard(body)


@models_app.command("info")
def models_info(
    name: Annotated[str, typer.Argument(help="Registry name, owner/repo/file.gguf, or a local path.")],
    json_out: JsonOpt = False,
) -> None:
    """What the GGUF header says (read without loading the weights), and the model's recommended sampling."""

    def body() -> None:
        from .config import resolve_paths
        from .errors import ModelError
        from .gguf_info import read_gguf
        from .planner import resume_cost
        from .registry import Registry, parse_spec, resolve_model

        paths = resolve_paths(_state["home"])
        spec = parse_spec(name)
        entry = Registry.load(paths).get(spec.name) if spec.kind == "registry" else None
        summary: dict[str, Any] = {}
        try:
            resolved = resolve_model(name, paths, download=False)
            info = read_gguf(resolved.path)
            summary = {**info.summary(), "n_swa": info.n_swa, **resume_cost(info)}
        except ModelError as exc:
            if entry is None:
                raise
            _notice(f"{exc.message}: {exc.hint} to read its GGUF header")  # what the registry knows still helps
            summary = {"name": entry.name, "downloaded": False, "context_length": entry.context_length}
        if entry is not None:
            summary["note"] = entry.note
            summary["recommended_sampling"] = dict(entry.sampling)
        if json_out:
            print(json.dumps(summary, default=str))
            return
        width = max(len(k) for k in summary)
        for k, v in summary.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a} = {b}" for a, b in v.items()) or "edgechat's defaults"
            print(f"{k:<{width}}  {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:<{width}}  {v}")

    _guard(body)


# plan -------------------------------------------------------------------------------------


@app.command()
def plan(
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, budget_mb: BudgetOpt = None,
    swa_full: Annotated[bool, typer.Option("--swa-full/--no-swa-full", help="Full-size sliding-window cache (more memory; not needed for exact resume).")] = False,
    json_out: JsonOpt = False, state_budget_mb: StateBudgetOpt = None,
) -> None:  # fmt: skip
    """Predict memory use from the GGUF header and pick the largest context that fits; and the disk the saved states may take."""

    def body() -> None:
        from .config import load_defaults, parse_gpu_layers, resolve_paths
        from .gguf_info import read_gguf
        from .planner import format_plan
        from .planner import plan as make_plan
        from .registry import resolve_model

        paths = resolve_paths(_state["home"])
        d = load_defaults(paths)
        g = parse_gpu_layers(gpu_layers if gpu_layers is not None else d.gpu_layers)
        fa = _flash(flash_attn)
        resolved = resolve_model(model or d.model, paths, download=False)
        kv = kv_type or d.kv_type
        budget = budget_mb if budget_mb is not None else d.budget_mb
        p = make_plan(
            read_gguf(resolved.path), n_ctx=ctx if ctx is not None else d.ctx, type_k=k_type or kv,
            type_v=v_type or kv, flash_attn=fa, gpu_layers=g,  # type: ignore[arg-type]
            budget_bytes=budget * (1 << 20) if budget is not None else None, swa_full=swa_full,
        )  # fmt: skip
        from .cli_cache import plan_disk

        disk, disk_text = plan_disk(paths, state_budget_mb or d.state_budget_mb, p)
        if json_out:
            print(json.dumps({**asdict(p), "disk": disk}, default=str))
            return
        from rich.console import Console

        Console().print(format_plan(p))
        Console().print(disk_text)

    _guard(body)


def _register_extensions() -> None:
    """Commands that live in their own modules (bench, kv-eval) add themselves to the app."""
    try:
        from . import cli_bench
    except ImportError:
        return
    cli_bench.register(app)
    from . import cli_cache

    cli_cache.register(app)


_register_extensions()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
