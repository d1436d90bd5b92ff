"""The memory probes report sane numbers and degrade to "no GPU" instead of failing."""

from __future__ import annotations

import platform
import sys
import time
import types
from pathlib import Path

import pytest

from edgechat import memory
from edgechat.memory import GpuMemory, MemorySnapshot, PeakRss, probe, rss_now

MiB = 1024 * 1024
HAS_GPU_DEVICE = Path("/dev/nvidia0").exists() or (platform.system() == "Darwin" and platform.machine() == "arm64")


def test_probe_returns_sane_values() -> None:
    snap = probe()
    assert isinstance(snap, MemorySnapshot)
    assert 0 < snap.ram_available <= snap.ram_total
    assert snap.process_rss > 0
    assert isinstance(snap.gpus, tuple)
    for gpu in snap.gpus:
        assert 0 <= gpu.free <= gpu.total


@pytest.mark.skipif(HAS_GPU_DEVICE, reason="this machine has a GPU")
def test_no_gpu_gives_an_empty_tuple() -> None:
    snap = probe()
    assert snap.gpus == ()
    assert snap.gpu_source == "none" and not snap.unified


def test_broken_nvml_degrades_to_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert memory._nvml_gpus() == ()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed at all
    assert memory._nvml_gpus() == ()
    monkeypatch.setattr(memory, "_ggml_gpus", lambda: ())
    assert probe().gpus == () or HAS_GPU_DEVICE


def test_nvml_figures_are_read_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("pynvml")
    mem = types.SimpleNamespace(total=80 << 30, free=70 << 30, used=10 << 30)
    fake.nvmlInit = lambda: None  # type: ignore[attr-defined]
    fake.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    fake.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    fake.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA Test" if h == 0 else "NVIDIA Test 2"  # type: ignore[attr-defined]
    fake.nvmlDeviceGetMemoryInfo = lambda h: mem  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus = memory._nvml_gpus()
    assert gpus == (
        GpuMemory(0, "NVIDIA Test", 80 << 30, 70 << 30, 10 << 30),
        GpuMemory(1, "NVIDIA Test 2", 80 << 30, 70 << 30, 10 << 30),
    )
    if not (platform.system() == "Darwin" and platform.machine() == "arm64"):
        snap = probe()
        assert snap.gpu_source == "nvml" and len(snap.gpus) == 2


def test_ggml_device_query_never_raises() -> None:
    # A CPU-only llama.cpp build lists only its CPU device, which is not a GPU.
    gpus = memory._ggml_gpus()
    assert isinstance(gpus, tuple)
    if not HAS_GPU_DEVICE:
        assert gpus == ()


def test_ggml_lists_the_cpu_device_and_the_probe_keeps_only_gpus() -> None:
    """engine.ggml_devices asks libggml (every build has its CPU device); memory keeps the dedicated GPUs."""
    from edgechat.engine import GGML_DEV_CPU, GGML_DEV_GPU, ggml_devices

    devices = ggml_devices()
    assert any(d.kind == GGML_DEV_CPU and d.description for d in devices)
    gpus = [d for d in devices if d.kind == GGML_DEV_GPU]
    assert [(g.name, g.total, g.index) for g in memory._ggml_gpus()] == [
        (d.description or "GPU", d.total, i) for i, d in enumerate(gpus)
    ]


def test_probe_without_gpus_skips_the_gpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> tuple[GpuMemory, ...]:
        raise AssertionError("GPU probe ran")

    monkeypatch.setattr(memory, "_nvml_gpus", boom)
    monkeypatch.setattr(memory, "_ggml_gpus", boom)
    if not (platform.system() == "Darwin" and platform.machine() == "arm64"):
        assert probe(gpus=False).gpus == ()


def test_rss_now_is_positive() -> None:
    assert rss_now() > 10 * MiB


def test_peak_rss_sees_an_allocation() -> None:
    size = 128 * MiB
    with PeakRss(interval=0.005) as peak:
        block = bytearray(size)
        block[::4096] = b"\x01" * len(range(0, size, 4096))  # touch every page
        # Held until the sampler has seen it (or 5 s): on a loaded CI box its thread was not
        # scheduled within a fixed 0.1 s once (it saw 4 KiB).
        deadline = time.monotonic() + 5
        while peak.peak < peak.start + 100 * MiB and time.monotonic() < deadline:
            time.sleep(0.01)
        del block
    assert peak.delta >= 100 * MiB
    assert peak.peak >= peak.start + 100 * MiB
    assert peak.end > 0
