"""What every command module shares: the option types, the global options, the error guard.

Command modules import from here and never from `edgechat.cli` (which imports them), so
there is no import cycle. This module stays cheap to import (typer and the error type
only): it is on the path of every `edgechat` process, `generate` in a shell loop included.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec

import typer

from ..errors import EdgechatError

if TYPE_CHECKING:
    from ..config import EngineOptions, Paths
    from ..session import Runtime
    from ..store import Store

P = ParamSpec("P")


class Globals:
    """The app-wide options (`edgechat --home DIR --debug CMD`), set by the app's callback.

    A plain class, not a dataclass: building a dataclass costs ~1 ms at every start (issue 12).
    """

    home: str | None = None
    debug: bool = False


GLOBALS = Globals()

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
StateBudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--state-budget-mb", help="Disk the saved KV states may take, in MiB (default: 20 GiB or 10 % of free disk)."
    ),
]
RpcOpt = Annotated[
    str | None,
    typer.Option(
        "--rpc",
        help="llama.cpp RPC servers HOST:PORT[,HOST:PORT...] whose devices take layers like GPUs (see README).",
    ),
]
RpcPublicOpt = Annotated[
    bool,
    typer.Option("--rpc-allow-public", help="Allow --rpc servers on public addresses (unencrypted: prefer a tunnel)."),
]


# errors -----------------------------------------------------------------------------------


def notice(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def fail(exc: BaseException) -> None:
    """`error: message — hint` and exit 1 (with --debug: the traceback instead)."""
    if GLOBALS.debug:
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(1)


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """Decorate a command: core errors become one line, Ctrl-C exits 130, a closed pipe 141; never a traceback.

    typer reads the parameters through `functools.wraps` (`__wrapped__`), so the decorated
    function keeps its options and help. Put it under `@app.command()`.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except EdgechatError as exc:
            fail(exc)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(141) from None  # like a process killed by SIGPIPE

    return run


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so the exit's flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# engine options and the runtime -----------------------------------------------------------


def flash(value: str | None) -> bool | None:
    if value in (None, "auto"):
        return None
    if value in ("on", "true", "1"):
        return True
    if value in ("off", "false", "0"):
        return False
    raise EdgechatError(f"--flash-attn {value!r} is not on, off or auto", "use --flash-attn on|off|auto")


def engine_options(
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
    rpc: str | None = None,
    rpc_allow_public: bool = False,
    state_budget_mb: int | None = None,
) -> EngineOptions:
    """The engine options as the command line gave them (one value, checked, for the Runtime)."""
    from ..config import EngineOptions

    return EngineOptions().given(
        model=model, ctx=ctx, kv_type=kv_type, type_k=k_type, type_v=v_type, flash_attn=flash(flash_attn),
        gpu_layers=gpu_layers, threads=threads, budget_mb=budget_mb, compaction=compaction, rpc=rpc,
        rpc_allow_public=rpc_allow_public or None, state_budget_mb=state_budget_mb,
    )  # fmt: skip


def runtime(
    options: EngineOptions, on_notice: Callable[[str], None] = notice, sampling: dict[str, Any] | None = None
) -> Runtime:
    from ..session import Runtime

    return Runtime(options=options, home=GLOBALS.home, on_notice=on_notice, sampling=sampling)


def paths() -> Paths:
    """The data directories for --home (or $EDGECHAT_HOME, or the user data dir)."""
    from ..config import resolve_paths

    return resolve_paths(GLOBALS.home)


def store() -> Store:
    from ..store import Store

    return Store(paths().db_path)


# input and output -------------------------------------------------------------------------


def read_stdin() -> str:
    """All of stdin as text; bytes that are not UTF-8 are a one-line error, not a traceback."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgechatError(
            f"the input is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})",
            "convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8",
        ) from None


def say_finish(finish_reason: str) -> None:
    """A reply the loop guard ended says so on stderr (stdout holds only the reply)."""
    if finish_reason == "repetition":
        print(
            "note: reply stopped: it kept repeating itself (finish_reason: repetition; --no-loop-guard lets it run)",
            file=sys.stderr,
        )


def stream_out(pieces: Iterator[str]) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


# groups -----------------------------------------------------------------------------------


def group(app: typer.Typer, name: str) -> typer.Typer:
    """The sub-app registered as `name` (e.g. "conversations"), for a module adding a command to it.

    Its module must come earlier in cli.COMMANDS than the module adding to it.
    """
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    raise LookupError(f"no command group {name!r} is registered yet: list its module earlier in cli.COMMANDS")
