"""Cold start (issue 12): no GPU device walk on a llama.cpp build that cannot offload."""

from __future__ import annotations

import pytest

from edgechat import memory
from edgechat.engine import supports_gpu_offload


def test_a_build_without_offload_skips_the_ggml_gpu_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    if supports_gpu_offload():
        pytest.skip("this llama.cpp build can offload: the probe must run")
    walked: list[bool] = []
    monkeypatch.setattr(memory, "_nvml_gpus", lambda: ())
    monkeypatch.setattr(memory, "_ggml_gpus", lambda: walked.append(True) or ())
    snap = memory.probe()
    assert walked == [] and snap.gpus == () and snap.gpu_source in ("none", "unified")


def test_a_build_with_offload_still_asks_ggml(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[bool] = []
    monkeypatch.setattr(memory, "_nvml_gpus", lambda: ())
    monkeypatch.setattr(memory, "_build_can_offload", lambda: True)
    monkeypatch.setattr(memory, "_ggml_gpus", lambda: walked.append(True) or ())
    memory.probe()
    assert walked == [True] or memory._is_apple_silicon()
