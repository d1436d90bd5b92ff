"""Will a registry model fit this machine? Verdicts for `models list` and the model picker.

No weights are loaded. A downloaded model is planned from its GGUF header; one that is not
here is planned from the architecture facts its models.toml entry carries (`shape`), with
its download size from the registry (or parameters x bits per weight), and says that it is
an estimate. The planner (planner.plan) decides, against the memory free now:
  fits     the model's trained context (up to COMFORT_CTX tokens) fits without compromise
  tight    it runs, but only with a compromise: a shorter context, a quantized KV cache,
           a smaller micro-batch or fewer GPU layers
  too big  not even the planner's smallest context fits
  unknown  neither a header nor a shape to plan from
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .errors import BudgetError, EdgechatError
from .gguf_info import GGUFInfo, TensorInfo, read_gguf

if TYPE_CHECKING:
    from .config import Paths
    from .memory import MemorySnapshot
    from .registry import ModelEntry, Registry

FITS, TIGHT, TOO_BIG, UNKNOWN = "fits", "tight", "too big", "unknown"
COMFORT_CTX = 8192  # a context this long (or the model's own, when shorter) without compromise is "fits"
# Average bits per weight of whole GGUF files by quantization (llama.cpp's quantize table,
# plus the higher-precision embeddings and output most files keep): for download estimates.
BITS_PER_WEIGHT = {
    "Q2_K": 3.0, "Q3_K_M": 3.9, "Q4_0": 4.6, "Q4_1": 5.0, "Q4_K_S": 4.7, "Q4_K_M": 5.0, "Q5_K_M": 5.8,
    "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0, "BF16": 16.0,
}  # fmt: skip
HUB_PROBE_S = 1.5


@dataclass(frozen=True)
class Fit:
    """One model's verdict on this machine; `models list --json` carries these fields."""

    verdict: str
    context: int  # tokens the planner would give it (0: it does not fit)
    download_bytes: int | None
    download_estimated: bool  # True: parameters x bits per weight, not a size the registry knows
    estimated: bool  # True: planned from models.toml's `shape`, the GGUF header is not on this machine
    reason: str


def download_size(entry: ModelEntry, path: Path | None = None) -> tuple[int | None, bool]:
    """(bytes, estimated): the file on disk, else the registry's size, else params x bits per weight."""
    if path is not None and path.is_file():
        return path.stat().st_size, False
    mf = entry.file()
    if mf.size:
        return mf.size, False
    params = entry.shape.get("params")
    bpw = BITS_PER_WEIGHT.get(mf.quant.upper())
    if params and bpw:
        return int(params * bpw / 8), True
    return None, True


def shape_info(entry: ModelEntry, size: int) -> GGUFInfo | None:
    """A stand-in GGUF header built from the entry's `shape` (None without one): enough for the planner."""
    sh = entry.shape
    needed = ("layers", "embd", "heads", "kv_heads", "head_dim", "vocab")
    if not all(k in sh for k in needed):
        return None
    arch = "estimate"
    n_layer, embd, vocab = int(sh["layers"]), int(sh["embd"]), int(sh["vocab"])
    meta: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": entry.name,
        f"{arch}.block_count": n_layer,
        f"{arch}.embedding_length": embd,
        f"{arch}.attention.head_count": int(sh["heads"]),
        f"{arch}.attention.head_count_kv": int(sh["kv_heads"]),
        f"{arch}.attention.key_length": int(sh["head_dim"]),
        f"{arch}.attention.value_length": int(sh["head_dim"]),
        f"{arch}.context_length": entry.context_length or 4096,
        f"{arch}.feed_forward_length": int(sh.get("ffn", 4 * embd)),
        "tokenizer.ggml.tokens.length": vocab,
    }
    if sh.get("sliding_window"):
        meta[f"{arch}.attention.sliding_window"] = int(sh["sliding_window"])
        meta[f"{arch}.attention.sliding_window_pattern"] = int(sh.get("swa_period", 6))
    params = float(sh.get("params", 0))
    bits = 8 * size / params if params else 5.0  # the file's average bits per weight
    embd_bytes = min(size // 2, int(vocab * embd * bits / 8))
    per_layer = max(0, size - embd_bytes) // max(1, n_layer)
    tensors = [TensorInfo("token_embd.weight", (embd, vocab), 0, 0, embd_bytes)]
    tensors += [TensorInfo(f"blk.{i}.weights", (per_layer,), 0, 0, per_layer) for i in range(n_layer)]
    return GGUFInfo(Path(entry.name), size, 3, meta, tuple(tensors))


def model_fit(entry: ModelEntry, paths: Paths, snapshot: MemorySnapshot, budget_bytes: int | None = None) -> Fit:
    """Plan `entry` against `snapshot` (and an explicit budget) and say whether it fits."""
    from . import planner
    from .registry import local_path

    path = local_path(entry, paths)
    size, size_estimated = download_size(entry, path)
    info: GGUFInfo | None = None
    estimated = True
    if path.is_file():
        try:
            info, estimated = read_gguf(path), False
        except EdgechatError:
            info = None
    if info is None and size:
        info = shape_info(entry, size)
    if info is None:
        return Fit(UNKNOWN, 0, size, size_estimated, True, "no GGUF header here and no `shape` in models.toml")
    trained = info.context_length or entry.context_length or 4096
    try:
        comfort = planner.plan(info, n_ctx=min(trained, COMFORT_CTX), budget_bytes=budget_bytes, snapshot=snapshot)
        full = planner.plan(info, budget_bytes=budget_bytes, snapshot=snapshot)
    except BudgetError as exc:
        return Fit(TOO_BIG, 0, size, size_estimated, estimated, exc.message)
    except EdgechatError as exc:  # a header the planner cannot read
        return Fit(UNKNOWN, 0, size, size_estimated, estimated, exc.message)
    verdict = TIGHT if comfort.compromises else FITS
    reason = "; ".join(comfort.compromises) or f"{full.n_ctx:,} tokens with a {full.type_k} cache"
    return Fit(verdict, full.n_ctx, size, size_estimated, estimated, reason)


def fits_table(
    registry: Registry, paths: Paths, budget_bytes: int | None = None, snapshot: MemorySnapshot | None = None
) -> dict[str, Fit]:
    """Every registry model's Fit, from one memory probe."""
    if snapshot is None:
        from .memory import probe

        snapshot = probe()
    return {name: model_fit(registry.entries[name], paths, snapshot, budget_bytes) for name in registry.names()}


def best_fit(registry: Registry, fits: dict[str, Fit]) -> str | None:
    """The model to suggest: the largest download among those that fit, other than the default."""
    good = [(f.download_bytes or 0, n) for n, f in fits.items() if f.verdict == FITS and n != registry.default_name]
    return max(good)[1] if good else None


def hub_reachable(timeout_s: float = HUB_PROBE_S) -> bool:
    """Whether a TCP connection to the hub (HF_ENDPOINT) opens within `timeout_s`; nothing is sent."""
    from .registry import hub_endpoint

    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def suggestion(registry: Registry, paths: Paths, budget_bytes: int | None = None) -> str | None:
    """One line suggesting the best model that fits, or None when there is nothing to suggest."""
    fits = fits_table(registry, paths, budget_bytes)
    name = best_fit(registry, fits)
    if name is None:
        return None
    f = fits[name]
    size = f"{'~' if f.download_estimated else ''}{(f.download_bytes or 0) / 1e9:.1f} GB"
    return (
        f"this machine fits {name} ({size} download, {f.context:,}-token context): "
        f"Ctrl+O to download it, or `edgechat chat -m {name}`; {registry.default_name} works offline now"
    )


def suggest_in_background(paths: Paths, budget_mb: int | None, notice: Callable[[str], None]) -> None:
    """Suggest a better model than the default, if the hub is in reach (the caller checks it is a first chat).

    Runs in a daemon thread: the chat starts on the default model at once, and a machine
    without a network never waits for this.
    """
    from .registry import Registry

    def work() -> None:
        try:
            if not hub_reachable():
                return
            line = suggestion(Registry.load(paths), paths, budget_mb * (1 << 20) if budget_mb else None)
        except Exception:  # noqa: BLE001 - a tip must never break the chat
            return
        if line:
            notice(line)

    threading.Thread(target=work, name="edgechat-suggest", daemon=True).start()
