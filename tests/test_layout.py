"""What the code says about itself stays true: the checks run, and one module owns llama_cpp."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "edgechat"


def _imports(path: Path) -> Iterator[str]:
    """Every module name a file imports, at any depth (lazy imports inside functions count)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_the_test_command_runs_ruff_format_and_mypy_before_the_suite() -> None:
    steps = [line.strip() for line in (ROOT / "scripts" / "test").read_text(encoding="utf-8").splitlines()]
    assert "set -euo pipefail" in steps  # a failing check stops the run
    order = [
        next(i for i, line in enumerate(steps) if needle in line)
        for needle in ("ruff check edgechat tests scripts", "ruff format --check edgechat tests scripts", "-m mypy")
    ]
    suite = next(i for i, line in enumerate(steps) if "-m pytest" in line)
    assert order == sorted(order) and order[-1] < suite
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert mypy["files"] == ["edgechat"] and "exclude" not in mypy  # tui/ is checked too


def test_engine_is_the_only_module_that_imports_llama_cpp() -> None:
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if any(name == "llama_cpp" or name.startswith("llama_cpp.") for name in _imports(path))
    )
    assert importers == ["edgechat/engine.py"]


def test_ctx_pad_is_defined_once() -> None:
    defined = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CTX_PAD" for t in node.targets)
    ]
    assert defined == ["edgechat/planner.py"]
