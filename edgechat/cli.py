"""`edgechat`: the app, its global options (--home, --debug), and the command modules it registers.

The commands live in edgechat/commands/, one module per group, each with a
`register(app: typer.Typer) -> None` (the pattern of simonw/llm's `register_commands`).
Adding a command is one line here: its module name in COMMANDS (see
edgechat/commands/__init__.py for what the module looks like). There is no optional
import: a command module that fails to import fails `edgechat` loudly.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from pathlib import Path
from typing import Annotated

import typer

from .commands.common import GLOBALS

# edgechat.commands.NAME modules, in --help order (commands first, then groups, each in this
# order); a module adding to another's group comes after it.
COMMANDS = (
    "generate",
    "send",
    "chat",
    "serve",
    "plan",
    "bench",  # bench, kv-eval
    "conversations",
    "models",
)


def _main(
    home: Annotated[
        Path | None, typer.Option("--home", help="Data directory (default: $EDGECHAT_HOME or the user data dir).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and llama.cpp's log.")] = False,
) -> None:
    GLOBALS.home = str(home) if home else None
    GLOBALS.debug = debug
    if debug:
        os.environ["EDGECHAT_DEBUG"] = "1"


def build_app() -> typer.Typer:
    """The `edgechat` app with every module in COMMANDS registered."""
    new = typer.Typer(
        name="edgechat",
        help="Local chat with GGUF models: instant resume from a saved KV cache, memory-budget planning.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    new.callback()(_main)
    for name in COMMANDS:
        import_module(f"{__package__}.commands.{name}").register(new)
    return new


app = build_app()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
