"""`edgechat generate`: one stateless completion, or a --batch file of them (one JSON line each)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import EdgechatError
from .common import (
    BudgetOpt,
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
    TempOpt,
    ThreadsOpt,
    VOpt,
    engine_options,
    guarded,
    read_stdin,
    runtime,
    say_finish,
    stream_out,
)

if TYPE_CHECKING:
    from ..config import SamplingSettings
    from ..session import Runtime
    from ..shutdown import SignalStop


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


@guarded
def generate(
    prompt: Annotated[str | None, typer.Argument(help="The prompt ('-' or omitted: read from stdin).")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")] = False,
    batch: Annotated[Path | None, typer.Option("--batch", help="JSONL file of prompts; one JSON line out per prompt.")] = None,
    model: ModelOpt = None, ctx: CtxOpt = None, kv_type: KvOpt = None, k_type: KOpt = None, v_type: VOpt = None,
    flash_attn: FaOpt = None, gpu_layers: GpuOpt = None, threads: ThreadsOpt = None, budget_mb: BudgetOpt = None,
    max_tokens: MaxTokOpt = None, temperature: TempOpt = None, seed: SeedOpt = None, json_out: JsonOpt = False,
    repeat_penalty: RepeatOpt = None, dry_multiplier: DryOpt = None, loop_guard: LoopGuardOpt = None,
    rpc: RpcOpt = None, rpc_allow_public: RpcPublicOpt = False,
) -> None:  # fmt: skip
    """One stateless completion, streamed to stdout."""
    text = _prompt(prompt) if batch is None else ""
    from ..shutdown import stop_on_signals

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
                rpc=rpc,
                rpc_allow_public=rpc_allow_public,
            )
        ) as rt,
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
                stream_out(iter(stream))
                say_finish(stream.result.finish_reason if stream.result else "")
    if sig.signum is not None:
        print(f"stopped by signal {sig.signum}", file=sys.stderr)
        raise typer.Exit(sig.exit_code)


def _prompt(given: str | None) -> str:
    """The prompt argument, or stdin for "-" or none (as `send -` does); never an empty one."""
    text = given
    if text is None or text == "-":
        if text is None and sys.stdin.isatty():
            raise EdgechatError(
                "no prompt given", 'pass it as an argument or pipe it in: echo "hi" | edgechat generate'
            )
        text = read_stdin()
    if not text.strip():
        raise EdgechatError("the prompt is empty", "give a prompt to complete")
    return text


def _run_batch(
    rt: Runtime, path: Path, system: str | None, raw: bool, sampling: SamplingSettings, sig: SignalStop
) -> None:
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


def _batch_sampling(path: Path, n: int, item: dict[str, Any], sampling: SamplingSettings) -> SamplingSettings:
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
