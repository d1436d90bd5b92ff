"""`edgechat`: the app, its global options (--home, --debug), and the command modules it registers.

The commands live in edgechat/commands/, one module per group, each with a
`register(app: typer.Typer) -> None` (the pattern of simonw/llm's `register_commands`).
Adding a command is one line here: its module name in COMMANDS (see
edgechat/commands/__init__.py for what the module looks like). There is no optional
import: a command module that fails to import fails `edgechat` loudly.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Annotated

import typer
from typer.models import CommandInfo

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
    "cache",
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


def for_args(full: typer.Typer, args: Sequence[str]) -> typer.Typer:
    """`full` with only the command that `args` run, when they name one of its commands.

    typer turns every registered command into a click command at each start, though a
    process runs one: ~25 ms of CPU for all of edgechat's (issue 12, cold start). Anything
    else (no command, --help, an unknown option before the command, a typo) gets the whole
    app, so help and errors list every command as before.
    """
    name = _command_name(args)
    commands = [c for c in full.registered_commands if _name(c) == name]
    groups = [g for g in full.registered_groups if g.name == name]
    if not commands and not groups:
        return full
    only = copy.copy(full)
    only.registered_commands, only.registered_groups = commands, groups
    return only


def _name(command: CommandInfo) -> str | None:
    """A registered command's name as typer derives it when none was given."""
    if command.name or command.callback is None:
        return command.name
    return command.callback.__name__.lower().replace("_", "-")


def _command_name(args: Sequence[str]) -> str | None:
    """The first argument after the app's own options; None when one of those is not known here."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--debug" or arg.startswith("--home="):
            i += 1
        elif arg == "--home":
            i += 2
        else:
            return None if arg.startswith("-") else arg
    return None


def main() -> None:
    try:
        for_args(app, sys.argv[1:])()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
