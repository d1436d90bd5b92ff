"""Probes for how much memory the machine has free right now: RAM, VRAM, this process.

The planner sizes context, KV type and GPU offload from a `MemorySnapshot`. Every probe
degrades to "nothing found" instead of raising: a laptop without NVIDIA drivers, a
CPU-only llama.cpp build or a sandbox without /proc must still get a plan.

VRAM comes from NVML (the `nvidia-ml-py` package, optional extra `[nvidia]`) and, when
that is missing or fails, from ggml's own device query, which engine.py (the one module
that talks to llama.cpp) makes for us. Devices of llama.cpp RPC servers registered with
--rpc are listed too, with the memory their servers report.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class GpuMemory:
    """One accelerator's memory in bytes, as its driver reports it now.

    `endpoint` is set for a device on a llama.cpp RPC server ("host:port"); its figures are
    what that server reports, and llama.cpp places layers on it like on a local GPU.
    """

    index: int
    name: str
    total: int
    free: int
    used: int
    endpoint: str = ""


@dataclass(frozen=True)
class MemorySnapshot:
    """What the machine can give a model at one moment, in bytes.

    `unified` is True on Apple Silicon: the GPU draws from RAM, so its single entry in
    `gpus` mirrors the RAM figures and must not be added to them.
    """

    ram_total: int
    ram_available: int
    process_rss: int
    gpus: tuple[GpuMemory, ...] = ()
    unified: bool = False
    gpu_source: str = "none"  # "nvml" | "ggml" | "unified" | "rpc" (remote devices only) | "none"
    # CPU features that change what llama.cpp allocates (the CPU_REPACK weight copies):
    # "avx2", "avx512f", "dotprod", "i8mm". Empty: none known.
    cpu_flags: frozenset[str] = frozenset()


def probe(*, gpus: bool = True) -> MemorySnapshot:
    """Read RAM, this process's RSS and (unless `gpus=False`) every GPU's memory."""
    total, available = _ram()
    rss = rss_now()
    flags = cpu_flags()
    if _is_apple_silicon():
        # Metal buffers live in the same RAM: one pool, counted once.
        gpu = GpuMemory(0, "Apple GPU (unified memory)", total, available, total - available)
        return MemorySnapshot(total, available, rss, (gpu,), unified=True, gpu_source="unified", cpu_flags=flags)
    if not gpus:
        return MemorySnapshot(total, available, rss, cpu_flags=flags)
    found = _nvml_gpus()
    source = "nvml"
    if not found and _build_can_offload():
        found = _ggml_gpus()
        source = "ggml"
    remote = _rpc_gpus(len(found))
    return MemorySnapshot(
        total,
        available,
        rss,
        found + remote,
        unified=False,
        gpu_source=source if found else ("rpc" if remote else "none"),
        cpu_flags=flags,
    )


_FLAG_NAMES = {"avx2": "avx2", "avx512f": "avx512f", "asimddp": "dotprod", "i8mm": "i8mm"}
_cpu_flags_cache: frozenset[str] | None = None


def cpu_flags() -> frozenset[str]:
    """The CPU features that decide llama.cpp's weight repacking, read once per process.

    Linux: /proc/cpuinfo ("flags" on x86, "Features" on ARM). Apple Silicon always has
    the dot-product instructions. An x86-64 machine whose flags cannot be read is taken
    to have AVX2 (every x86 laptop since 2013): counting a repack that does not happen
    only makes the plan cautious.
    """
    global _cpu_flags_cache
    if _cpu_flags_cache is not None:
        return _cpu_flags_cache
    found: set[str] = set()
    machine = platform.machine().lower()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    found |= {_FLAG_NAMES[f] for f in value.split() if f in _FLAG_NAMES}
                    break
    except OSError:
        if _is_apple_silicon():
            found.add("dotprod")
        elif machine in ("x86_64", "amd64"):
            found.add("avx2")
    _cpu_flags_cache = frozenset(found)
    return _cpu_flags_cache


def rss_now() -> int:
    """Resident set size of this process in bytes (0 when it cannot be read)."""
    try:  # Linux: resident pages are the second field of statm (psutil reads the same)
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - a probe never raises
        return 0


def anon_rss() -> int | None:
    """Resident anonymous memory of this process in bytes (None when it cannot be told apart).

    What the process would hand back by freeing its buffers: RSS without the file-backed
    pages (a memory-mapped model is page cache, already counted as available RAM).
    Linux: RssAnon from /proc/self/status; elsewhere psutil's rss minus shared, if it has it.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        info = psutil.Process().memory_info()
        shared = getattr(info, "shared", None)
        return int(info.rss - shared) if shared is not None else None
    except Exception:  # noqa: BLE001 - a probe never raises
        return None


class PeakRss:
    """Context manager that samples RSS in a thread and keeps the peak, for benchmarks.

    Sampling can miss a spike shorter than `interval`; llama.cpp's allocations are
    long-lived (weights, KV, compute buffer), so a 10 ms period catches them.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self.end = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def delta(self) -> int:
        """How far the peak rose above the RSS at entry."""
        return max(0, self.peak - self.start)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgechat-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.end = rss_now()
        self.peak = max(self.peak, self.end)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_now())
            time.sleep(self.interval)


# --- probes ---------------------------------------------------------------------------


def _ram() -> tuple[int, int]:
    linux = _meminfo()
    if linux is not None:
        return linux
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except Exception:  # noqa: BLE001
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (OSError, ValueError, AttributeError):
        return 0, 0


def _meminfo() -> tuple[int, int] | None:
    """Total and available RAM from /proc/meminfo (what psutil reads on Linux, without its
    import on every start); None elsewhere, or on kernels without MemAvailable."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    fields: dict[bytes, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        if key in (b"MemTotal", b"MemAvailable"):
            fields[key] = int(rest.split()[0]) * 1024
    if len(fields) != 2:
        return None
    return fields[b"MemTotal"], fields[b"MemAvailable"]


def _is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def _nvml_gpus() -> tuple[GpuMemory, ...]:
    """NVIDIA GPUs through NVML; no driver, no package or any NVML error gives ()."""
    try:
        import pynvml  # from nvidia-ml-py
    except Exception:  # noqa: BLE001
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return ()
    try:
        out: list[GpuMemory] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(
                GpuMemory(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    total=int(mem.total),
                    free=int(mem.free),
                    used=int(mem.used),
                )
            )
        return tuple(out)
    except Exception:  # noqa: BLE001
        return ()
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _build_can_offload() -> bool:
    """Whether this llama.cpp build has a GPU backend at all. Without one ggml lists only the
    CPU, and asking it cost 0.12 s of every cold start (issue 12)."""
    try:
        from .engine import supports_gpu_offload

        return supports_gpu_offload()
    except Exception:  # noqa: BLE001 - no llama_cpp: nothing to ask
        return False


def _rpc_gpus(first_index: int) -> tuple[GpuMemory, ...]:
    """Devices of the llama.cpp RPC servers this process registered (--rpc), with the memory they report."""
    try:
        from .engine import rpc_devices

        devices = rpc_devices()
    except Exception:  # noqa: BLE001 - a probe never raises
        return ()
    return tuple(
        GpuMemory(first_index + i, d.name, d.total, d.free, d.total - d.free, endpoint=d.endpoint)
        for i, d in enumerate(devices)
    )


def _ggml_gpus() -> tuple[GpuMemory, ...]:
    """GPUs as the llama.cpp build in use sees them (CUDA, ROCm, Vulkan, SYCL...).

    Only dedicated GPUs count: an integrated GPU (IGPU) allocates from host RAM, which
    the RAM figures already cover. A CPU-only build reports just its CPU device: ().
    """
    try:
        from .engine import GGML_DEV_GPU, ggml_devices

        gpus = [d for d in ggml_devices() if d.kind == GGML_DEV_GPU]
    except Exception:  # noqa: BLE001 - no llama_cpp, an old libggml without the symbols, ...
        return ()
    return tuple(GpuMemory(i, d.description or "GPU", d.total, d.free, d.total - d.free) for i, d in enumerate(gpus))
