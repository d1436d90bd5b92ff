"""Models that fit this machine (issue 19): `models list` verdicts, estimates without a header, the first-chat tip."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_hub import FakeHub  # noqa: E402

from edgechat import planner  # noqa: E402
from edgechat.config import resolve_paths  # noqa: E402
from edgechat.fit import (  # noqa: E402
    FITS,
    TOO_BIG,
    best_fit,
    fits_table,
    hub_reachable,
    model_fit,
    shape_info,
    suggest_in_background,
    suggestion,
)
from edgechat.gguf_info import read_gguf  # noqa: E402
from edgechat.memory import MemorySnapshot  # noqa: E402
from edgechat.registry import Registry  # noqa: E402

from .conftest import run_cli  # noqa: E402

GiB = 1 << 30
# `models list --json`: one object per model with exactly these keys (registry.ModelRow's fields).
LIST_KEYS = [
    "name", "quant", "default_quant", "quants", "file", "source", "repo", "downloaded", "path", "size",
    "context_length", "chat", "note", "default", "sampling",
    "fit", "fit_context", "fit_estimated", "fit_reason", "download_bytes", "download_estimated",
]  # fmt: skip
BIG_MACHINE = MemorySnapshot(ram_total=64 * GiB, ram_available=48 * GiB, process_rss=0)
SMALL_MACHINE = MemorySnapshot(ram_total=4 * GiB, ram_available=2 * GiB, process_rss=0)


def test_models_list_json_carries_the_verdict_and_a_tiny_budget_makes_big_models_too_big(home: Path) -> None:
    r = run_cli("models", "list", "--json", "--budget-mb", "200", home=home)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    for row in rows.values():
        assert row["fit"] in ("fits", "tight", "too big", "unknown")
        assert list(row) == LIST_KEYS  # the --json contract: these keys, in this order
    for big in ("qwen3-4b", "llama-3.1-8b", "mistral-7b", "gemma-3-4b"):
        assert rows[big]["fit"] == "too big" and rows[big]["fit_context"] == 0
    assert rows["smollm2-135m"]["fit"] in ("fits", "tight") and rows["smollm2-135m"]["fit_context"] >= 512
    assert rows["llama-3.2-3b"]["download_bytes"] == 2019377696 and not rows["llama-3.2-3b"]["download_estimated"]
    assert rows["qwen3-4b"]["download_estimated"] and 2.0e9 < rows["qwen3-4b"]["download_bytes"] < 3.0e9

    roomy = json.loads(run_cli("models", "list", "--json", "--budget-mb", "60000", home=home).stdout)
    assert {row["name"]: row["fit"] for row in roomy}["llama-3.1-8b"] == "fits"

    table = run_cli("models", "list", "--budget-mb", "200", home=home)
    assert "too big" in table.stdout and "estimated" in table.stdout


def test_a_downloaded_model_is_planned_from_its_header(home: Path, smollm2: Path) -> None:
    paths = resolve_paths(home)
    registry = Registry.load(paths)
    entry = registry.get("smollm2-135m")
    estimated = model_fit(entry, paths, BIG_MACHINE)
    (home / "models").mkdir(parents=True)
    os.symlink(smollm2, home / "models" / smollm2.name)
    real = model_fit(entry, paths, BIG_MACHINE)
    assert estimated.estimated and not real.estimated
    assert real.verdict == FITS and real.context == 8192
    assert real.download_bytes == smollm2.stat().st_size and not real.download_estimated


def test_the_shape_estimate_is_close_to_the_real_header(home: Path, smollm2: Path, gemma: Path) -> None:
    registry = Registry.load(resolve_paths(home))
    for name, path in (("smollm2-135m", smollm2), ("gemma3-270m", gemma)):
        real = read_gguf(path)
        fake = shape_info(registry.get(name), path.stat().st_size)
        assert fake is not None
        a = planner.estimate(real, n_ctx=4096)
        b = planner.estimate(fake, n_ctx=4096)
        assert a.kv_bytes_per_token == b.kv_bytes_per_token, name
        assert abs(a.total - b.total) < 0.1 * a.total, name


def test_best_fit_is_the_largest_model_that_fits(home: Path) -> None:
    paths = resolve_paths(home)
    registry = Registry.load(paths)
    big = fits_table(registry, paths, snapshot=BIG_MACHINE)
    assert big["llama-3.1-8b"].verdict == FITS
    assert best_fit(registry, big) == "llama-3.1-8b"
    small = fits_table(registry, paths, snapshot=SMALL_MACHINE)
    assert small["llama-3.1-8b"].verdict == TOO_BIG
    choice = best_fit(registry, small)
    assert choice is not None and small[choice].verdict == FITS
    assert (small[choice].download_bytes or 0) < 1.5e9


def test_the_first_chat_tip_needs_the_hub(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = resolve_paths(home)
    got: list[str] = []
    done = threading.Event()

    def notice(text: str) -> None:
        got.append(text)
        done.set()

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert hub_reachable()
        suggest_in_background(paths, 60000, notice)  # a budget, so the verdict does not follow this box
        assert done.wait(30)
    assert "this machine fits llama-3.1-8b" in got[0] and "smollm2-135m works offline" in got[0]
    line = suggestion(Registry.load(paths), paths)
    assert line is None or "Ctrl+O" in line


def test_no_hub_no_tip(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert not hub_reachable(0.5)
