"""The CLI's structure (issue 14 item 3) and its cold start (issue 12): command modules register
themselves, none imports cli.py, a broken one fails loudly, errors are one line, and a run
builds and imports only what its command needs."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import edgechat.commands
from edgechat import cli
from edgechat.commands.common import GLOBALS, guarded
from edgechat.errors import EdgechatError

COMMANDS = ["generate", "send", "chat", "serve", "plan", "bench", "kv-eval", "conversations", "models", "cache"]


def _py(code: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]


def test_help_lists_every_command_in_order() -> None:
    out = CliRunner().invoke(cli.app, ["--help"], terminal_width=100).output
    # A command's row starts right after the border; a wrapped description line is indented.
    rows = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and line[2] != " "]
    assert [r for r in rows if r in COMMANDS] == COMMANDS


def test_every_command_module_is_registered() -> None:
    modules = {m.name for m in pkgutil.iter_modules(edgechat.commands.__path__)} - {"common"}
    assert modules == set(cli.COMMANDS)
    for name in cli.COMMANDS:
        assert callable(importlib.import_module(f"edgechat.commands.{name}").register)


def test_no_command_module_imports_the_cli() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {list(cli.COMMANDS)!r}:\n"
        "    importlib.import_module('edgechat.commands.' + name)\n"
        "assert 'edgechat.cli' not in sys.modules, 'a command module imported edgechat.cli'\n"
    )
    r = _py(code)
    assert r.returncode == 0, r.stderr


def test_a_command_module_that_cannot_import_fails_the_cli_loudly() -> None:
    """It used to vanish: cli.py imported bench/kv-eval inside try/except ImportError."""
    r = _py("import sys; sys.modules['edgechat.commands.bench'] = None\nimport edgechat.cli")
    assert r.returncode == 1 and "edgechat.commands.bench" in r.stderr


def _demo(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @guarded
    def run(count: int = typer.Option(1, "--count", help="How many.")) -> None:
        """Raise what the test asks for."""
        raise exc

    @app.callback()
    def main(debug: bool = False) -> None:
        GLOBALS.debug = debug

    return app


def test_guarded_turns_an_edgechat_error_into_one_line_and_keeps_the_options() -> None:
    r = CliRunner().invoke(_demo(EdgechatError("it broke", "do this")), ["run", "--count", "2"])
    assert r.exit_code == 1 and r.output.strip() == "error: it broke — do this"
    assert "--count" in CliRunner().invoke(_demo(ValueError()), ["run", "--help"]).output
    assert CliRunner().invoke(_demo(KeyboardInterrupt()), ["run"]).exit_code == 130


def test_guarded_shows_the_traceback_with_debug() -> None:
    try:
        r = CliRunner().invoke(_demo(EdgechatError("it broke", "do this")), ["--debug", "run"])
    finally:
        GLOBALS.debug = False
    assert isinstance(r.exception, EdgechatError)


@pytest.mark.parametrize(
    ("args", "kept"),
    [
        (["generate", "hi"], ["generate"]),
        (["--home", "/x", "--debug", "send", "-c", "a"], ["send"]),
        (["--home=/x", "kv-eval"], ["kv-eval"]),
        (["conversations", "list"], ["conversations"]),
        (["--help"], COMMANDS),
        (["generat"], COMMANDS),  # a typo: click suggests among all of them
        (["--bogus", "generate"], COMMANDS),
        ([], COMMANDS),
    ],
)
def test_a_run_builds_only_its_command(args: list[str], kept: list[str]) -> None:
    app = cli.for_args(cli.app, args)
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert sorted(names) == sorted(kept)
    assert len(cli.app.registered_commands) + len(cli.app.registered_groups) == len(COMMANDS)  # untouched


def test_generate_imports_nothing_it_does_not_need(smollm2: Path, tmp_path: Path) -> None:
    """typer >= 0.29 coerces options through pydantic (~0.17 s of CPU per start); rich, the UI,
    the server and the hub client load only where used; statistics pulls in decimal. A model
    given as a file skips the registry (its hub and PyPI code), pinned threads and RAM read from
    /proc skip psutil, and a home without config.toml skips the TOML parser."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['edgechat', '--home', {str(tmp_path)!r}, 'generate', 'hi', '-m', {str(smollm2)!r},"
        " '--max-tokens', '2', '--threads', '1']\n"
        "try:\n    runpy.run_module('edgechat', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    r = _py(code)
    assert r.returncode == 0, r.stderr
    modules = set(r.stderr.strip().splitlines()[-1].split())
    loaded = {m.split(".")[0] for m in modules}
    heavy = {"pydantic", "rich", "textual", "starlette", "uvicorn", "huggingface_hub", "tomlkit", "statistics",
             "decimal", "matplotlib"}  # fmt: skip
    assert loaded & heavy == set()
    if sys.platform == "linux":
        assert loaded & {"psutil", "tomllib"} == set()
    assert "edgechat.registry" not in modules


def test_a_command_registered_without_a_name_is_found_by_typers_name() -> None:
    app = typer.Typer()
    app.callback()(lambda: None)

    def cache_prune() -> None:
        """Prune."""

    app.command()(cache_prune)
    app.command("other")(cache_prune)
    only = cli.for_args(app, ["cache-prune"])
    assert len(only.registered_commands) == 1 and only.registered_commands[0].callback is cache_prune
