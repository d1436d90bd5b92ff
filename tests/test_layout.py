"""What the code says about itself stays true: the checks run."""

from __future__ import annotations

import tomllib

from .conftest import ROOT


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
