"""Predict what llama.cpp will allocate for a model, from its GGUF header alone, and choose
the context size, KV-cache type and GPU offload that fit a memory budget.

llama.cpp allocates everything when the context is created (weights, the whole KV cache
for n_ctx, a compute buffer sized for the worst-case micro-batch), so a plan made before
loading is the only chance to pick settings that fit. The sizing rules below follow
llama.cpp as vendored in llama-cpp-python 0.3.36; each quirk names the source it comes
from. Checked against llama.cpp's own log in tests/test_planner.py.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .config import KV_TYPES, EngineSettings
from .errors import BudgetError, ConfigError
from .gguf_info import GGUFInfo, read_gguf

if TYPE_CHECKING:
    from rich.console import RenderableType

    from .memory import GpuMemory, MemorySnapshot

MiB = 1024 * 1024
CTX_PAD = 256  # llama-context.cpp: cparams.n_ctx = GGML_PAD(n_ctx, 256)
MIN_CTX = 512  # the smallest context the planner shrinks to on its own
MIN_UBATCH = 128  # the smallest micro-batch it shrinks to
# ggml row sizes (ggml.c type_traits): f16 is 2 bytes a value, q8_0 34 bytes per 32, q4_0 18 per 32.
_KV_BLOCK = {"f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}
# Budget defaults, see budget_for().
RAM_SHARE = 0.75
RAM_MARGIN = 256 * MiB
VRAM_MARGIN = 512 * MiB  # CUDA context, cuBLAS workspace, allocator slack
VRAM_MARGIN_SHARE = 0.05
# VRAM a process takes beyond llama.cpp's logged buffers once it has decoded (cuBLAS
# workspace, lazily loaded kernels), measured on an H100 after the first 512-token batch:
# +108 MiB without flash attention, +10-18 MiB with it, +176 MiB at --gpu-layers 0.
GPU_RUNTIME = 128 * MiB


# --- what llama.cpp will allocate -------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Bytes llama.cpp allocates for one set of engine settings, per device.

    `weights_mmap` is the part of `weights_cpu` that is a read-only file mapping: page
    cache the kernel can evict (and re-read from disk, slowly), shared between processes.
    `weights_repack` is llama.cpp's CPU_REPACK buffer: anonymous host memory holding a
    re-laid-out copy of the CPU-resident matrices of some quant types (Q4_0, Q4_K,
    IQ4_NL on AVX2; more on ARM). `kv_bytes_per_token` counts the layers whose cache
    spans the whole context (all attention layers, unless a sliding-window model runs
    with swa_full off). `rs` is the recurrent state of hybrid and recurrent models
    (llama.cpp's "RS buffer"), a fixed size whatever the context.
    `checkpoint_bytes` is one context checkpoint (a PARTIAL_ONLY state: the recurrent
    state, or the sliding window); `checkpoints` of them are kept in RAM beside the
    live state (`checkpoint_ram`, in `total_cpu`) and on disk beside the state file.
    `buffers` is the sum of the buffers llama.cpp logs (weights, KV, RS, compute,
    output); `total` adds what it does not log (`overhead` on the host, `overhead_gpu`
    per GPU process, the checkpoints).
    """

    n_ctx: int
    type_k: str
    type_v: str
    flash_attn: bool
    swa_full: bool
    n_batch: int
    n_ubatch: int
    gpu_layers: int
    kv_bytes_per_token: int
    kv_cells_swa: int
    memory_kind: str  # dense | swa | hybrid | recurrent
    n_swa: int
    weights_cpu: int
    weights_gpu: int
    weights_mmap: int
    weights_repack: int
    kv_cpu: int
    kv_gpu: int
    rs_cpu: int
    rs_gpu: int
    checkpoint_bytes: int
    checkpoints: int
    checkpoint_ram: int
    compute_cpu: int
    compute_gpu: int
    output: int
    overhead: int
    overhead_gpu: int
    weights: int
    kv: int
    rs: int
    compute: int
    buffers: int
    total_cpu: int
    total_gpu: int
    total: int


class _Shape(NamedTuple):
    """The numbers from a GGUF header that memory depends on."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    q_dim: int
    n_vocab: int
    n_ff: int
    kv_k: tuple[int, ...]  # per layer: n_head_kv * head_dim_k (0: the layer has no KV cache)
    kv_v: tuple[int, ...]
    swa: tuple[bool, ...]
    n_swa: int
    kind: str
    rs_layer: tuple[int, ...]  # per layer: bytes of its recurrent state (0: none)
    layer_bytes: tuple[int, ...]
    layer_repack: tuple[int, ...]  # per layer: bytes the CPU would repack
    output_repack: int
    input_bytes: int
    output_bytes: int  # what moves to the GPU with the output layer
    output_cpu_bytes: int  # what the output layer adds on the CPU
    output_weight: int  # the output matrix (token_embd when tied), copied up by op offload
    max_layer_tensor: int
    trained_ctx: int


# ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type: the weight types the CPU backend
# re-lays out into its CPU_REPACK buffer, and the row count a matrix must be a multiple of.
_REPACK_X86 = {"q4_0": 8, "q4_k": 8, "iq4_nl": 8, "mxfp4": 8}
_REPACK_X86_AVX512 = {**_REPACK_X86, "q2_k": 8}
_REPACK_ARM = {"q4_0": 4, "q4_k": 8, "q5_k": 8, "q6_k": 8, "iq4_nl": 4, "mxfp4": 4, "q8_0": 4}
# Weights read with GGML_OP_GET_ROWS or a convolution, never a matrix product: not repacked.
_NOT_MATMUL = ("token_embd.", "position_embd.", "token_types.", "per_layer_token_embd.")


def repack_rules(cpu_flags: frozenset[str]) -> dict[str, int]:
    """{weight type: row multiple} that this CPU repacks (memory.cpu_flags() gives the flags)."""
    if "avx2" in cpu_flags:
        return _REPACK_X86_AVX512 if "avx512f" in cpu_flags else _REPACK_X86
    if "dotprod" in cpu_flags or "i8mm" in cpu_flags:
        return _REPACK_ARM
    return {}


def _repacked(t: Any, rules: dict[str, int]) -> int:
    """Bytes of tensor `t` that llama.cpp's CPU backend copies into CPU_REPACK (same size)."""
    if not rules or t.name.startswith(_NOT_MATMUL) or "conv" in t.name:
        return 0
    # MUL_MAT on a 2-D matrix, or MUL_MAT_ID on stacked 3-D experts; ne[1] must tile.
    if len(t.shape) == 2 or (len(t.shape) == 3 and "_exps" in t.name):
        rows = rules.get(t.type_name)
        if rows and t.shape[1] % rows == 0:
            return int(t.nbytes)
    return 0


def _shape(info: GGUFInfo, cpu_flags: frozenset[str] = frozenset()) -> _Shape:
    n_layer = info.n_layer
    heads = info.n_head_kv_per_layer() or [0] * n_layer
    swa = info.swa_layers()
    hd_k, hd_v = info.head_dim_k, info.head_dim_v
    hd_k_swa = int(info.get("attention.key_length_swa", hd_k))
    hd_v_swa = int(info.get("attention.value_length_swa", hd_v))
    kv_k = tuple(h * (hd_k_swa if s else hd_k) for h, s in zip(heads, swa, strict=False))
    kv_v = tuple(h * (hd_v_swa if s else hd_v) for h, s in zip(heads, swa, strict=False))
    n_ff = info.get("feed_forward_length", 0)
    n_ff = max(n_ff) if isinstance(n_ff, list) and n_ff else int(n_ff or 4 * info.n_embd)
    by_name = {t.name: t for t in info.tensors}
    embd = by_name.get("token_embd.weight")
    n_vocab = info.vocab_size or (embd.shape[1] if embd and len(embd.shape) > 1 else 0)
    output_norm = sum(t.nbytes for t in info.tensors if t.name.startswith("output_norm"))
    output_w = sum(t.nbytes for t in info.tensors if t.name.startswith("output.") or t.name == "output")
    tied = output_w == 0 and embd is not None
    # Tied embeddings: llama-model.cpp creates `output` as a TENSOR_DUPLICATED copy of
    # token_embd in the output layer's buffer. On the CPU with mmap both alias one file
    # range; offloaded, the GPU gets a second copy while the input layer keeps its own.
    output_bytes = output_norm + (embd.nbytes if tied and embd else output_w)
    blk = [t for t in info.tensors if t.name.startswith("blk.")]
    rules = repack_rules(cpu_flags)
    layer_repack = [0] * n_layer
    for t in blk:
        idx = int(t.name.split(".", 2)[1])
        if idx < n_layer:
            layer_repack[idx] += _repacked(t, rules)
    output_t = [t for t in info.tensors if t.name.startswith("output.") or t.name == "output"]
    # A tied output is token_embd duplicated for a matrix product: that copy is repacked too.
    output_repack = sum(_repacked(t, rules) for t in output_t)
    if tied and embd is not None:
        output_repack = _repacked(embd._replace(name="output.weight"), rules)
    state = (info.n_embd_r + info.n_embd_s) * 4
    input_bytes = info.weights_bytes - sum(t.nbytes for t in blk) - output_norm - output_w
    return _Shape(
        name=info.name,
        n_layer=n_layer,
        n_embd=info.n_embd,
        n_head=info.n_head,
        q_dim=info.n_head * hd_k,
        n_vocab=n_vocab,
        n_ff=int(n_ff),
        kv_k=kv_k,
        kv_v=kv_v,
        swa=tuple(swa),
        n_swa=info.n_swa,
        kind=info.memory_kind,
        rs_layer=tuple(state if r else 0 for r in info.recurrent_layers()),
        layer_bytes=tuple(info.layer_bytes()),
        layer_repack=tuple(layer_repack),
        output_repack=output_repack,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        output_cpu_bytes=output_norm + output_w,
        output_weight=output_bytes - output_norm,
        max_layer_tensor=max((t.nbytes for t in blk), default=0),
        trained_ctx=info.context_length,
    )


def pad_ctx(n_ctx: int) -> int:
    """The context llama.cpp really allocates for a requested one (multiple of 256)."""
    return max(CTX_PAD, -(-n_ctx // CTX_PAD) * CTX_PAD)


def kv_row_bytes(kv_type: str, n_values: int) -> int:
    """ggml_row_size: bytes for n_values of a KV cache type."""
    blck, size = _KV_BLOCK[kv_type]
    return n_values // blck * size


def checkpoint_bytes(s: _Shape, type_k: str, type_v: str) -> int:
    """One context checkpoint (llama_state_seq_get_data_ext with PARTIAL_ONLY), in bytes.

    Hybrid and recurrent: the recurrent state, f32 (llama-memory-hybrid.cpp writes only
    that part). SWA: about the window's cells in every sliding layer (llama-kv-cache-iswa.cpp
    writes only the SWA cache, unmasked cells only). Dense: none, a checkpoint would copy
    the whole cache and trimming is exact anyway.
    """
    # Beside the data, llama.cpp's state writer stores 12 bytes per cell (position, one
    # sequence id) and a type and row size (12 bytes) per tensor (llama-kv-cache.cpp,
    # llama-memory-recurrent.cpp state_write_*).
    if s.kind in ("hybrid", "recurrent"):
        layers = sum(1 for b in s.rs_layer if b)
        return sum(s.rs_layer) + 24 * layers + 28 if layers else 0
    if s.kind == "swa":
        swa = [(k, v) for k, v, is_swa in zip(s.kv_k, s.kv_v, s.swa, strict=False) if k and is_swa]
        per_cell = sum(kv_row_bytes(type_k, k) + kv_row_bytes(type_v, v) for k, v in swa) + 12
        return s.n_swa * per_cell + 24 * len(swa) + 24
    return 0


# Context checkpoints kept per conversation (the start of the last user message and of
# the generation header): in RAM beside the live state and on disk beside the state file.
CHECKPOINTS = 2


def _check_types(type_k: str, type_v: str, flash_attn: bool) -> None:
    for which, t in (("K", type_k), ("V", type_v)):
        if t not in KV_TYPES:
            raise ConfigError(f"unknown {which} cache type {t!r}", f"use one of {', '.join(KV_TYPES)}")
    if type_v != "f16" and not flash_attn:
        raise ConfigError(
            f"a {type_v} V cache needs flash attention, which is turned off",
            "drop --flash-attn off, or use --kv-type f16",
        )


def _estimate(
    s: _Shape,
    *,
    n_ctx: int,
    type_k: str,
    type_v: str,
    flash_attn: bool,
    gpu_layers: int,
    n_batch: int,
    n_ubatch: int,
    swa_full: bool,
    gpu_offload: bool,
    op_offload: bool = True,
) -> Estimate:
    _check_types(type_k, type_v, flash_attn)
    n_ctx = pad_ctx(n_ctx)
    # llama-context.cpp: n_batch = min(n_ctx, n_batch) for causal models, n_ubatch <= n_batch.
    n_batch = min(n_ctx, n_batch)
    ub = min(n_batch, n_ubatch)
    n_layer = s.n_layer
    g = n_layer + 1 if gpu_layers < 0 else min(gpu_layers, n_layer + 1)
    if not gpu_offload:
        g = 0  # llama-model.cpp: act_gpu_layers = devices.empty() ? 0 : ...

    # KV cells per layer. llama-kv-cache-iswa.cpp: the SWA cache holds
    # GGML_PAD(min(n_ctx, n_swa * n_seq + n_ubatch), 256) cells (one sequence here), or
    # n_ctx with swa_full.
    swa_cells = 0
    if any(s.swa):
        swa_cells = n_ctx if swa_full else -(-min(n_ctx, s.n_swa + ub) // CTX_PAD) * CTX_PAD
    cells = [swa_cells if is_swa else n_ctx for is_swa in s.swa]
    # llama-kv-cache.cpp: without flash attention V is stored transposed and every layer's
    # V rows are sized for the widest layer (n_embd_v_gqa_max).
    v_max = max(s.kv_v, default=0)
    kv_layer = [
        c * (kv_row_bytes(type_k, k) + kv_row_bytes(type_v, v if flash_attn else v_max)) if k else 0
        for c, k, v in zip(cells, s.kv_k, s.kv_v, strict=False)
    ]
    per_token = sum(
        kv_row_bytes(type_k, k) + kv_row_bytes(type_v, v if flash_attn else v_max)
        for k, v, is_swa in zip(s.kv_k, s.kv_v, s.swa, strict=False)
        if k and (swa_full or not is_swa)
    )

    # llama-model.cpp load_tensors: layers il >= n_layer + 1 - n_gpu_layers go to the GPU,
    # where il == n_layer is the output layer: it is the first one offloaded, so
    # n_gpu_layers = 1 moves only the output layer and n_layer + 1 moves everything.
    # The input layer (token_embd) always stays on the CPU.
    gpu_start = max(n_layer + 1 - g, 0)
    on_gpu = [il >= gpu_start for il in range(n_layer)]
    output_gpu = g >= 1
    weights_gpu = sum(b for b, gpu in zip(s.layer_bytes, on_gpu, strict=True) if gpu)
    weights_cpu = s.input_bytes + sum(b for b, gpu in zip(s.layer_bytes, on_gpu, strict=True) if not gpu)
    # CPU_REPACK: CPU-resident matrices of a repackable type get a second, anonymous copy
    # (the mapped one is read once at load, then only the repacked one is used).
    weights_repack = sum(b for b, gpu in zip(s.layer_repack, on_gpu, strict=True) if not gpu)
    if output_gpu:
        weights_gpu += s.output_bytes
    else:
        weights_cpu += s.output_cpu_bytes
        weights_repack += s.output_repack
    # offload_kqv (llama-cpp-python's default): a layer's KV cache, and its recurrent
    # state (llama-memory-recurrent.cpp, one f32 row of r and s per sequence), live on
    # its layer's device.
    kv_gpu = sum(b for b, gpu in zip(kv_layer, on_gpu, strict=True) if gpu)
    kv_cpu = sum(kv_layer) - kv_gpu
    rs_gpu = sum(b for b, gpu in zip(s.rs_layer, on_gpu, strict=True) if gpu)
    rs_cpu = sum(s.rs_layer) - rs_gpu
    ckpt = checkpoint_bytes(s, type_k, type_v)
    ckpt_ram = CHECKPOINTS * ckpt

    compute_cpu, compute_gpu = _compute(s, cells, on_gpu, output_gpu, ub, flash_attn, gpu_offload, op_offload)
    # llama-context.cpp output_reserve: logits for n_seq_max (1) outputs, f32, on the host.
    output = s.n_vocab * 4
    overhead = _overhead(s)
    overhead_gpu = GPU_RUNTIME if gpu_offload else 0
    buffers = weights_cpu + weights_repack + weights_gpu + kv_cpu + kv_gpu + rs_cpu + rs_gpu
    buffers += compute_cpu + compute_gpu + output
    total_cpu = weights_cpu + weights_repack + kv_cpu + rs_cpu + compute_cpu + output + overhead + ckpt_ram
    total_gpu = weights_gpu + kv_gpu + rs_gpu + compute_gpu + overhead_gpu
    return Estimate(
        n_ctx=n_ctx,
        type_k=type_k,
        type_v=type_v,
        flash_attn=flash_attn,
        swa_full=swa_full,
        n_batch=n_batch,
        n_ubatch=ub,
        gpu_layers=g,
        kv_bytes_per_token=per_token,
        kv_cells_swa=swa_cells,
        memory_kind=s.kind,
        n_swa=s.n_swa,
        weights_cpu=weights_cpu,
        weights_gpu=weights_gpu,
        weights_mmap=weights_cpu,
        weights_repack=weights_repack,
        kv_cpu=kv_cpu,
        kv_gpu=kv_gpu,
        rs_cpu=rs_cpu,
        rs_gpu=rs_gpu,
        checkpoint_bytes=ckpt,
        checkpoints=CHECKPOINTS if ckpt else 0,
        checkpoint_ram=ckpt_ram,
        compute_cpu=compute_cpu,
        compute_gpu=compute_gpu,
        output=output,
        overhead=overhead,
        overhead_gpu=overhead_gpu,
        weights=weights_cpu + weights_repack + weights_gpu,
        kv=kv_cpu + kv_gpu,
        rs=rs_cpu + rs_gpu,
        compute=compute_cpu + compute_gpu,
        buffers=buffers,
        total_cpu=total_cpu,
        total_gpu=total_gpu,
        total=total_cpu + total_gpu,
    )


def _compute(
    s: _Shape,
    cells: list[int],
    on_gpu: list[bool],
    output_gpu: bool,
    ub: int,
    flash_attn: bool,
    gpu_offload: bool,
    op_offload: bool = True,
) -> tuple[int, int]:
    """The compute buffers (host, GPU): ggml-alloc's peak of live tensors in the worst graph.

    llama-context.cpp reserves the graph for a full micro-batch (n_ubatch tokens, all of
    them outputs) attending to the whole cache, and ggml-alloc reuses a tensor's memory
    once its consumers ran, so a buffer is the largest of three moments:
    - the output head: logits n_vocab x n_ubatch f32, next to a few hidden-state rows
      (Gemma 3's 262k vocabulary makes this 512 MiB at n_ubatch 512);
    - attention: without flash attention the scores KQ (n_kv x n_ubatch x n_head, f32;
      softmax runs in place), plus the graph inputs (one mask per cache, n_kv x n_ubatch,
      f16 with flash attention else f32; i64 scatter indices per cache when V is stored
      transposed) and the Q/K/V rows;
    - the feed-forward block: gate, up and their product, n_ff wide.
    With a GPU backend the whole graph's scratch lands in the GPU buffer, whatever the
    layer split (measured on an H100: the host buffer held only the graph inputs), and
    ggml-backend's op offload (CUDA: batches of >= 32 tokens) copies CPU-resident
    weights up for their matrix products: at --gpu-layers 0 that is the output matrix,
    next to the logits. Fitted to llama.cpp's "compute buffer size" log within ~3%.
    RPC devices offload no ops (ggml-rpc.cpp: `offload_op` is NULL), so with only remote
    devices (`op_offload` False) the CPU computes its own layers and the logits when it keeps
    the output layer, in a host buffer sized like a CPU-only one for those parts.
    """
    row = 4 * ub  # one f32 value per token of the micro-batch
    logits = row * (s.n_vocab + 3 * s.n_embd)
    kv_dim = max(max(s.kv_k, default=0), max(s.kv_v, default=0))
    # One mask (and one set of V indices) per cache: an iSWA memory has two, even when
    # swa_full makes them the same size.
    layers = list(zip(cells, s.kv_k, s.swa, strict=False))
    full = [c for c, k, is_swa in layers if k and not is_swa]
    swa = [c for c, k, is_swa in layers if k and is_swa]
    caches = [group[0] for group in (full, swa) if group]
    inputs = sum(caches) * ub * (2 if flash_attn else 4) + (0 if flash_attn else len(caches) * ub * kv_dim * 8)
    kq = 0 if flash_attn else row * s.n_head * max(caches, default=0)
    attention = kq + inputs + row * (2 * s.n_embd + 2 * s.q_dim + 2 * kv_dim)
    ffn = row * (3 * s.n_ff + 2 * s.n_embd)
    if not gpu_offload:
        return max(logits, attention, ffn), 0
    if not op_offload:
        on_cpu = not all(on_gpu)
        host = max(inputs + row * 2 * s.n_embd, max(attention, ffn) if on_cpu else 0, 0 if output_gpu else logits)
        remote = max(logits if output_gpu else 0, attention, ffn) if any(on_gpu) or output_gpu else 0
        return host, remote
    copies = s.max_layer_tensor if not all(on_gpu) else 0
    gpu = max(logits + (0 if output_gpu else s.output_weight), attention + copies, ffn + copies)
    host = inputs + row * 2 * s.n_embd  # graph inputs and the token embeddings, built on the host
    return host, gpu


def _overhead(s: _Shape) -> int:
    """Host memory outside llama.cpp's logged buffers: vocabulary tables, graph metadata.

    Measured as RSS growth beyond the logged buffers: ~22 MiB for a 49k vocabulary,
    ~47 MiB for 262k. (llama-cpp-python also reserves an n_batch x n_vocab f32 logits
    array, but leaves it untouched unless logits_all is set, so it is not counted.)
    """
    return 16 * MiB + 128 * s.n_vocab


def estimate(
    info: GGUFInfo,
    *,
    n_ctx: int,
    type_k: str = "f16",
    type_v: str = "f16",
    flash_attn: bool | None = None,
    gpu_layers: int = 0,
    n_batch: int = 512,
    n_ubatch: int = 512,
    swa_full: bool = False,
    gpu_offload: bool | None = None,
    cpu_flags: frozenset[str] | None = None,
) -> Estimate:
    """What llama.cpp allocates for these exact settings (gpu_layers -1: all).

    flash_attn None means what EngineSettings means: on exactly when V is quantized.
    `gpu_offload` says whether llama.cpp has a GPU backend (None: when gpu_layers != 0);
    it matters even at gpu_layers 0, where a GPU build still runs the big batched matrix
    products, and keeps their scratch, on the GPU. `cpu_flags` (None: this machine's,
    from memory.cpu_flags()) decide which weights the CPU backend repacks.
    """
    fa = flash_attn if flash_attn is not None else type_v != "f16"
    return _estimate(
        _shape(info, _cpu_flags(cpu_flags)),
        n_ctx=n_ctx,
        type_k=type_k,
        type_v=type_v,
        flash_attn=fa,
        gpu_layers=gpu_layers,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        swa_full=swa_full,
        gpu_offload=gpu_layers != 0 if gpu_offload is None else gpu_offload,
    )


def estimate_settings(
    settings: EngineSettings,
    info: GGUFInfo | None = None,
    *,
    gpu_offload: bool | None = None,
    cpu_flags: frozenset[str] | None = None,
) -> Estimate:
    """`estimate()` for the settings an Engine is (or will be) created with."""
    return estimate(
        info or read_gguf(settings.model_path),
        n_ctx=settings.n_ctx,
        type_k=settings.type_k,
        type_v=settings.type_v,
        flash_attn=settings.use_flash_attn,
        gpu_layers=settings.gpu_layers,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        swa_full=settings.swa_full,
        gpu_offload=gpu_offload,
        cpu_flags=cpu_flags,
    )


def _cpu_flags(flags: frozenset[str] | None) -> frozenset[str]:
    if flags is not None:
        return flags
    from .memory import cpu_flags

    return cpu_flags()


# --- placement across devices ---------------------------------------------------------------


@dataclass(frozen=True)
class DeviceShare:
    """The layers one device gets: `first`..`last` of the repeating layers (-1: none), and the output layer.

    `device` is "CPU", a GPU's name or an RPC device's ("RPC0"); `endpoint` is the RPC server
    ("host:port"), empty for a local device. The CPU always keeps the input layer (token_embd).
    """

    device: str
    endpoint: str
    free: int
    layers: int
    first: int
    last: int
    output: bool


def placement(n_layer: int, gpu_layers: int, gpus: tuple[GpuMemory, ...]) -> tuple[DeviceShare, ...]:
    """Which device llama.cpp gives each layer when `gpu_layers` leave the CPU.

    llama.cpp (`llama_prepare_model_devices`, llama.cpp l.276) lists RPC devices first, then
    local GPUs; `load_tensors` (llama-model.cpp l.1557-1600) offloads layers from
    n_layer + 1 - gpu_layers on (the output layer counts as layer n_layer) and, without a
    tensor_split, gives each device a share proportional to the free memory it reports: layer
    il goes to the first device whose cumulative share exceeds (il - start) / gpu_layers.
    """
    order = [x for x in gpus if x.endpoint] + [x for x in gpus if not x.endpoint]
    g = n_layer + 1 if gpu_layers < 0 else min(gpu_layers, n_layer + 1)
    if not order:
        g = 0
    start = max(n_layer + 1 - g, 0)
    weights = [max(x.free, 0) for x in order]
    if not sum(weights):
        weights = [1] * len(order)
    splits = list(itertools.accumulate(w / sum(weights) for w in weights))
    owner: list[int] = []  # -1: the CPU
    for il in range(n_layer + 1):
        if il < start:
            owner.append(-1)
        else:
            owner.append(min(bisect.bisect_right(splits, (il - start) / g), len(order) - 1))
    out = []
    for idx in range(-1, len(order)):
        mine = [il for il in range(n_layer) if owner[il] == idx]
        if idx >= 0 and not mine and owner[n_layer] != idx:
            continue
        dev = order[idx] if idx >= 0 else None
        out.append(
            DeviceShare(
                device=dev.name if dev else "CPU",
                endpoint=dev.endpoint if dev else "",
                free=dev.free if dev else 0,
                layers=len(mine),
                first=mine[0] if mine else -1,
                last=mine[-1] if mine else -1,
                output=owner[n_layer] == idx,
            )
        )
    return tuple(out)


def describe_placement(devices: tuple[DeviceShare, ...]) -> str:
    """One line: "CPU: input + layers 0-9 · RPC0 (127.0.0.1:50052): layers 10-29 + output"."""
    parts = []
    for d in devices:
        what = [] if d.device != "CPU" else ["input"]
        if d.layers:
            what.append(f"layers {d.first}-{d.last}" if d.layers > 1 else f"layer {d.first}")
        if d.output:
            what.append("output")
        name = f"{d.device} ({d.endpoint})" if d.endpoint else d.device
        parts.append(f"{name}: {' + '.join(what)}")
    return " · ".join(parts)


# --- budgets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How many bytes a model may take: on the host, on the GPU(s), and in all.

    With unified memory (Apple Silicon) `gpu` is None and `ram` bounds everything.
    """

    ram: int
    gpu: int | None
    total: int | None
    unified: bool
    source: str


def ram_floor(available: int) -> int:
    """The RAM the planner leaves to the rest of the machine when `available` bytes are free to
    a model: a quarter of it plus RAM_MARGIN. Free RAM falling below it while a model is loaded
    is memory pressure (pressure.py re-plans the context then)."""
    return available - max(0, int(RAM_SHARE * available) - RAM_MARGIN)


def budget_for(snapshot: MemorySnapshot, budget_bytes: int | None = None, ram_floor: int | None = None) -> Budget:
    """The memory a new model may use, from a live snapshot.

    Without an explicit budget: 75% of the RAM available now, less 256 MiB, so the
    desktop, the UI and the page cache keep some room (available RAM already counts
    reclaimable cache, and llama.cpp commits its buffers in full); on a GPU, the VRAM
    free now less max(512 MiB, 5% of the card) for the CUDA context, cuBLAS workspace
    and allocator slack that the driver does not show until llama.cpp starts.
    An explicit `budget_bytes` caps the whole model (RAM + VRAM) and replaces the RAM
    share; VRAM is still limited by what is free.
    `ram_floor`, when given, replaces the share: the model may take what is available above
    it (a re-plan under memory pressure passes the floor it watches), within `budget_bytes`.
    """
    gpus = snapshot.gpus if not snapshot.unified else ()
    gpu: int | None = None
    if gpus:
        gpu = sum(max(0, g.free - max(VRAM_MARGIN, int(VRAM_MARGIN_SHARE * g.total))) for g in gpus)
    if ram_floor is not None:
        above = max(0, snapshot.ram_available - ram_floor)
        where = f"{above // MiB:,} MiB available above a floor of {ram_floor // MiB:,} MiB"
        if budget_bytes is not None:
            return Budget(
                min(int(budget_bytes), above), gpu, int(budget_bytes), snapshot.unified, f"--budget-mb, {where}"
            )
        return Budget(above, gpu, None, snapshot.unified, where)
    if budget_bytes is not None:
        return Budget(int(budget_bytes), gpu, int(budget_bytes), snapshot.unified, "--budget-mb")
    ram = max(0, int(RAM_SHARE * snapshot.ram_available) - RAM_MARGIN)
    return Budget(
        ram, gpu, None, snapshot.unified, f"75% of {snapshot.ram_available // MiB:,} MiB available RAM - 256 MiB"
    )


def _fits(e: Estimate, b: Budget) -> bool:
    if b.total is not None and e.total > b.total:
        return False
    if b.unified or b.gpu is None:
        return e.total <= b.ram and (b.unified or e.total_gpu == 0)
    return e.total_cpu <= b.ram and e.total_gpu <= b.gpu


# --- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan(Estimate):
    """The settings chosen for a model and budget, what they cost, and why.

    `json.dumps(dataclasses.asdict(plan))` is `edgechat plan --json`.
    """

    model: str = ""
    budget: int | None = None  # cap on the whole model, when one was given
    budget_ram: int = 0
    budget_gpu: int | None = None
    max_ctx_that_fits: int = 0
    reasons: tuple[str, ...] = ()
    compromises: tuple[str, ...] = ()  # the reasons the budget forced: said at load, not only by `plan`
    devices: tuple[DeviceShare, ...] = ()  # where the layers go when any leave the CPU (placement())

    def engine_settings(self, model_path: str | Path, threads: int | None = None, seed: int = 0) -> EngineSettings:
        """The EngineSettings that make llama.cpp allocate what this plan predicts."""
        return EngineSettings(
            model_path=str(model_path),
            n_ctx=self.n_ctx,
            type_k=self.type_k,
            type_v=self.type_v,
            flash_attn=self.flash_attn,
            gpu_layers=self.gpu_layers,
            threads=threads,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            swa_full=self.swa_full,
            seed=seed,
        )


def plan(
    info: GGUFInfo,
    *,
    n_ctx: int | None = None,
    kv_type: str | None = None,
    type_k: str | None = None,
    type_v: str | None = None,
    flash_attn: bool | None = None,
    gpu_layers: Literal["auto"] | int = "auto",
    budget_bytes: int | None = None,
    snapshot: MemorySnapshot | None = None,
    n_batch: int = 512,
    n_ubatch: int = 512,
    swa_full: bool = False,
    gpu_offload: bool | None = None,
    ram_floor: int | None = None,
) -> Plan:
    """Choose n_ctx, KV types and GPU layers for `info` within a memory budget.

    Preference order: the largest context (the model's trained context, or `n_ctx` as a
    cap), then a quantized cache (f16 -> q8_0 -> q4_0; a quantized V turns flash
    attention on), then fewer GPU layers. When the target context fits no combination,
    the combination that holds the most tokens wins. Settings given explicitly
    (kv_type/type_k/type_v, an int gpu_layers) are kept as they are.

    `snapshot` defaults to `memory.probe()`; `gpu_offload` (can llama.cpp use the GPU)
    defaults to "a GPU was found and this llama.cpp build supports offload".
    `ram_floor`: see budget_for (a re-plan under memory pressure).
    Raises BudgetError when not even MIN_CTX tokens with the cheapest cache fit.
    """
    if n_ctx is not None and n_ctx < 1:
        raise ConfigError(f"--ctx {n_ctx} is not a positive number of tokens", "use --ctx 512 or more, or leave it out")
    if budget_bytes is not None and budget_bytes <= 0:
        raise ConfigError(
            f"--budget-mb {budget_bytes / MiB:g} is not a positive amount of memory",
            "use --budget-mb 512 or more, or leave it out to use a share of what is free",
        )
    if snapshot is None:
        from .memory import probe

        snapshot = probe()
    s = _shape(info, snapshot.cpu_flags)
    b = budget_for(snapshot, budget_bytes, ram_floor)
    reasons: list[str] = []
    forced: list[str] = []

    # Context target.
    trained = s.trained_ctx
    if not trained:
        trained = 4096
        reasons.append("the model does not state its trained context; assuming 4,096 tokens")
    target = pad_ctx(n_ctx) if n_ctx else pad_ctx(trained)
    why_target = "your --ctx" if n_ctx else "the model's trained context"
    if n_ctx and n_ctx > trained:
        reasons.append(f"--ctx {n_ctx:,} exceeds the trained context ({trained:,}): quality may drop past it")

    # KV types to try. A type given for K alone (or V alone) leaves the other one f16, as
    # the options say; with flash attention off only an f16 V cache is possible (llama.cpp
    # stores V transposed then, which quantized types cannot be), so only K is quantized.
    if kv_type or type_k or type_v:
        tk = type_k or kv_type or "f16"
        tv = type_v or kv_type or "f16"
        kv_choices = [(tk, tv)]
    elif flash_attn is False:
        kv_choices = [(t, "f16") for t in KV_TYPES]
    else:
        kv_choices = [(t, t) for t in KV_TYPES]
    for tk, tv in kv_choices:
        fa = flash_attn if flash_attn is not None else tv != "f16"
        _check_types(tk, tv, fa)

    # GPU layers to try.
    has_gpu = bool(snapshot.gpus)
    can_offload = gpu_offload if gpu_offload is not None else (has_gpu and _llama_supports_gpu())
    all_layers = s.n_layer + 1
    if isinstance(gpu_layers, int):
        wanted = all_layers if gpu_layers < 0 else min(gpu_layers, all_layers)
        if wanted and not can_offload:
            # A compromise, not only a reason: a load says it too, the request was not met.
            forced.append(
                f"--gpu-layers {gpu_layers} ignored: "
                + ("no GPU found" if not has_gpu else "this llama.cpp build cannot offload to the GPU")
                + ", everything runs on the CPU"
            )
            reasons.append(forced[-1])
            wanted = 0
        layer_choices = [wanted]
    elif not can_offload:
        layer_choices = [0]
        reasons.append(
            "no GPU found: everything runs on the CPU"
            if not has_gpu
            else "a GPU was found but this llama.cpp build cannot offload: everything runs on the CPU"
        )
    elif snapshot.unified:
        layer_choices = [all_layers]  # one memory pool: offloading fewer layers saves nothing
    else:
        layer_choices = list(range(all_layers, -1, -1))

    # A smaller micro-batch is the last resort: it shrinks the compute buffer (logits for
    # n_ubatch tokens) at some cost in prefill speed.
    # A local GPU runs the CPU layers' big matrix products too (op offload); RPC devices do not.
    op_offload = not (snapshot.gpus and all(x.endpoint for x in snapshot.gpus))
    ub_choices = [n_ubatch]
    while ub_choices[-1] // 2 >= MIN_UBATCH:
        ub_choices.append(ub_choices[-1] // 2)

    Rung = tuple[tuple[str, str], int, int]  # (K/V types, GPU layers, n_ubatch)

    def est(ctx: int, rung: Rung) -> Estimate:
        (tk, tv), g, ub = rung
        fa = flash_attn if flash_attn is not None else tv != "f16"
        return _estimate(
            s, n_ctx=ctx, type_k=tk, type_v=tv, flash_attn=fa, gpu_layers=g,
            n_batch=n_batch, n_ubatch=ub, swa_full=swa_full, gpu_offload=can_offload, op_offload=op_offload,
        )  # fmt: skip

    def max_ctx(rung: Rung, limit: int) -> int:
        """The largest multiple of CTX_PAD up to `limit` that fits (0: not even MIN_CTX)."""
        lo, hi = min(MIN_CTX, limit) // CTX_PAD, limit // CTX_PAD
        if not _fits(est(lo * CTX_PAD, rung), b):
            return 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _fits(est(mid * CTX_PAD, rung), b) else (lo, mid - 1)
        return lo * CTX_PAD

    ladder: list[Rung] = [(kv, g, ub) for ub in ub_choices for g in layer_choices for kv in kv_choices]
    chosen = next((r for r in ladder if _fits(est(target, r), b)), None)
    ctx = target
    if chosen is None:
        best = 0
        for rung in ladder:  # the first rung that holds the most tokens
            m = max_ctx(rung, target)
            if m > best:
                best, chosen = m, rung
        if chosen is None:
            floor = min(MIN_CTX, target)
            need = est(floor, ladder[-1])
            raise BudgetError(
                f"{s.name} needs at least {_mib(need.total)} ({floor} tokens, {ladder[-1][0][0]} cache, "
                f"{need.gpu_layers} GPU layers, n_ubatch {need.n_ubatch}: {_mib(need.total_cpu)} RAM"
                + (f" + {_mib(need.total_gpu)} VRAM" if need.total_gpu else "")
                + f") but the budget allows {_describe_budget(b)}",
                "free some memory, raise --budget-mb, or use a smaller model",
            )
        ctx = best
        forced.append(
            f"context {ctx:,} tokens, not {target:,} ({why_target}): that would need "
            f"{_mib(est(target, ladder[0]).total)} with a {ladder[0][0][0]} cache, "
            f"over the budget of {_describe_budget(b)}"
        )
        reasons.append(forced[-1])
    else:
        reasons.append(f"context {target:,} tokens: {why_target}")
    (tk, tv), g, ub = chosen
    e = est(ctx, chosen)

    # Reasons for the cache type, the micro-batch and the offload.
    if len(kv_choices) == 1:
        reasons.append(f"KV cache K {tk} / V {tv}: as requested")
    elif (tk, tv) == kv_choices[0]:
        reasons.append("KV cache f16: it fits, and it is the fastest to prefill")
    else:
        f16 = est(ctx, (kv_choices[0], g, ub))
        forced.append(
            f"KV cache {tk}: f16 would take {_mib(f16.kv)} of cache ({_mib(f16.total)} in all), over the budget; "
            f"{tk} takes {_mib(e.kv)}. On the CPU a quantized cache prefills about half as fast"
        )
        reasons.append(forced[-1])
    if ub != n_ubatch:
        full = est(ctx, ((tk, tv), g, n_ubatch))
        forced.append(
            f"n_ubatch {ub}, not {n_ubatch}: the compute buffer drops from {_mib(full.compute)} to "
            f"{_mib(e.compute)}; prefill runs in smaller, somewhat slower steps"
        )
        reasons.append(forced[-1])
    if any(s.swa) and swa_full and (chosen != ladder[0] or ctx < target):
        no_full = _estimate(
            s, n_ctx=ctx, type_k=tk, type_v=tv, flash_attn=e.flash_attn, gpu_layers=g,
            n_batch=n_batch, n_ubatch=ub, swa_full=False, gpu_offload=can_offload, op_offload=op_offload,
        )  # fmt: skip
        reasons.append(
            f"swa_full off would cut the KV cache from {_mib(e.kv)} to {_mib(no_full.kv)}, "
            "but the sliding-window cache could then no longer be shifted or hold the full history"
        )
    reasons.append(describe_kind(e.memory_kind, e.n_swa, e.checkpoint_bytes))
    if e.rs:
        reasons.append(f"recurrent state {_mib(e.rs)}: fixed, whatever the context length (llama.cpp's RS buffer)")
    if e.weights_repack:
        reasons.append(
            f"{_mib(e.weights_repack)} of weights are repacked for this CPU (llama.cpp's CPU_REPACK buffer): "
            "anonymous memory beside the mapped file, which is read once at load"
        )
    if e.flash_attn and flash_attn is None and tv != "f16":
        reasons.append(f"flash attention on: llama.cpp needs it for a {tv} V cache")
    remote = [x for x in snapshot.gpus if x.endpoint]
    gpu_word = (
        "the GPU" if not remote else "RPC devices" if len(remote) == len(snapshot.gpus) else "GPUs and RPC devices"
    )
    if can_offload and not snapshot.unified:
        if g == all_layers:
            reasons.append(f"all {all_layers} layers (incl. the output layer) on {gpu_word}")
        elif isinstance(gpu_layers, int):
            reasons.append(f"{g} of {all_layers} layers on {gpu_word}: as requested")
        else:
            forced.append(
                f"{g} of {all_layers} layers on {gpu_word} (llama.cpp offloads the output layer first, then the last "
                f"repeating layers): more would not fit {_mib(b.gpu or 0)} of {'VRAM' if not remote else 'device memory'}"
            )
            reasons.append(forced[-1])
    elif snapshot.unified:
        reasons.append("unified memory: every layer runs on the GPU, all from one pool of RAM")
    if e.compute > e.kv and e.compute_cpu + e.compute_gpu >= 4 * s.n_vocab * e.n_ubatch:
        reasons.append(
            f"compute buffer {_mib(e.compute)}: the logits of {e.n_ubatch} tokens x {s.n_vocab:,} vocabulary "
            "entries; a smaller n_ubatch shrinks it"
        )
    if e.weights_mmap:
        reasons.append(
            f"{_mib(e.weights_mmap)} of weights are memory-mapped: page cache, shared and evictable, "
            "but counted here because evicting them means reading the file again every token"
        )
    reasons.append(f"budget: {_describe_budget(b)} ({b.source})")
    if budget_bytes is not None and budget_bytes > snapshot.ram_available + sum(x.free for x in snapshot.gpus):
        reasons.append(f"the budget exceeds what is free now ({_mib(snapshot.ram_available)} RAM)")
    devices = placement(s.n_layer, g, snapshot.gpus) if can_offload and not snapshot.unified else ()
    if len(snapshot.gpus) > 1 and not snapshot.unified:
        reasons.append(
            f"{len(snapshot.gpus)} {'GPUs' if not remote else 'devices'}: llama.cpp splits the offloaded layers "
            "between them by their free memory" + (", RPC devices first" if remote else "")
        )
    if remote:
        reasons.append(
            "remote devices (llama.cpp RPC): "
            + "; ".join(f"{x.name} at {x.endpoint}, {_mib(x.free)} free of {_mib(x.total)}" for x in remote)
            + ". Each token's activations cross the network at every device boundary, and saving a "
            "conversation's state reads its KV cache back over it"
        )
        if not e.flash_attn and any(d.endpoint and (d.layers or d.output) for d in devices):
            reasons.append(
                "flash attention is off: llama.cpp then stores V transposed and saves or restores it one row "
                "per network round trip (scripts/bench_rpc.py: 37x slower than local over loopback, 2.5x with "
                "--flash-attn on)"
            )

    fits_up_to = max_ctx(chosen, max(target, pad_ctx(trained)))
    return Plan(
        **{f: getattr(e, f) for f in Estimate.__dataclass_fields__},
        model=s.name,
        budget=b.total,
        budget_ram=b.ram,
        budget_gpu=b.gpu,
        max_ctx_that_fits=fits_up_to,
        reasons=tuple(reasons),
        compromises=tuple(forced),
        devices=devices,
    )


def describe_kind(kind: str, n_swa: int, checkpoint: int) -> str:
    """One line: the model's memory kind and what resuming a conversation costs on it."""
    n = CHECKPOINTS
    ckpt = (
        f"resuming keeps {n} context checkpoints of {_mib(checkpoint)} each ({_mib(n * checkpoint)}), "
        "in RAM beside the live state and on disk beside the state file"
    )
    if kind == "swa":
        return f"sliding-window attention (window {n_swa:,} tokens): {ckpt}"
    if kind == "hybrid":
        return f"hybrid (attention + recurrent layers): {ckpt}"
    if kind == "recurrent":
        return f"recurrent (no KV cache): {ckpt}"
    return "dense transformer: a trim of the cache is exact, resuming needs no checkpoints"


def resume_cost(info: GGUFInfo, type_k: str = "f16", type_v: str = "f16") -> dict[str, Any]:
    """`models info`: the memory kind and what resuming costs, for a K/V cache of these types."""
    s = _shape(info)
    ckpt = checkpoint_bytes(s, type_k, type_v)
    return {
        "recurrent_state_bytes": sum(s.rs_layer),
        "checkpoint_bytes": ckpt,
        "checkpoints": CHECKPOINTS if ckpt else 0,
        "resume": describe_kind(s.kind, s.n_swa, ckpt),
    }


def fits_tokens(p: Plan) -> int:
    """How many tokens a conversation can hold under this plan (the context size)."""
    return p.n_ctx


def _llama_supports_gpu() -> bool:
    try:
        from .engine import supports_gpu_offload

        return supports_gpu_offload()
    except Exception:  # noqa: BLE001 - no llama_cpp: no offload
        return False


def _mib(n: int) -> str:
    return f"{n / MiB:,.1f} MiB"


def _describe_budget(b: Budget) -> str:
    if b.unified or b.gpu is None:
        return f"{_mib(b.ram)}"
    out = f"{_mib(b.ram)} RAM + {_mib(b.gpu)} VRAM"
    return out + (f", {_mib(b.total)} in all" if b.total is not None else "")


# --- display ------------------------------------------------------------------------------


def format_plan(p: Plan) -> RenderableType:
    """`edgechat plan`: the chosen settings, the memory each part takes, and why."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    settings = Table.grid(padding=(0, 2))
    settings.add_column(style="bold")
    settings.add_column()
    rows: list[tuple[str, Any]] = [
        ("model", p.model),
        ("memory kind", p.memory_kind + (f" (window {p.n_swa:,} tokens)" if p.memory_kind == "swa" else "")),
        ("context", f"{p.n_ctx:,} tokens (up to {p.max_ctx_that_fits:,} fit this budget)"),
        ("KV cache", f"K {p.type_k} / V {p.type_v}, {p.kv_bytes_per_token:,} bytes per token"),
        ("flash attention", "on" if p.flash_attn else "off"),
        ("GPU layers", str(p.gpu_layers)),
        *([("placement", describe_placement(p.devices))] if p.devices else []),
        ("batch", f"n_batch {p.n_batch}, n_ubatch {p.n_ubatch}"),
    ]
    if p.kv_cells_swa:
        rows.append(("sliding window", f"{p.kv_cells_swa:,} cells" + (" (swa_full)" if p.swa_full else "")))
    rows.append(("llama.cpp", llama_params(p)))
    for k, v in rows:
        settings.add_row(k, v)

    has_gpu = p.total_gpu > 0 or (p.budget_gpu is not None)
    table = Table(title="memory", title_justify="left")
    table.add_column("part")
    table.add_column("RAM", justify="right")
    if has_gpu:
        table.add_column("RPC/GPU" if any(d.endpoint for d in p.devices) else "VRAM", justify="right")
    table.add_column("total", justify="right")

    def row(name: str, cpu: int, gpu: int = 0, *, style: str | None = None) -> None:
        cells = [name, _mib(cpu)] + ([_mib(gpu)] if has_gpu else []) + [_mib(cpu + gpu)]
        table.add_row(*cells, style=style)

    row("weights", p.weights_cpu, p.weights_gpu)
    if p.weights_repack:
        row("repacked weights", p.weights_repack)
    row("KV cache", p.kv_cpu, p.kv_gpu)
    if p.rs:
        row("recurrent state", p.rs_cpu, p.rs_gpu)
    if p.checkpoint_ram:
        row(f"checkpoints ({p.checkpoints} x {_mib(p.checkpoint_bytes)})", p.checkpoint_ram)
    row("compute buffer", p.compute_cpu, p.compute_gpu)
    row("output (logits)", p.output)
    row("runtime overhead", p.overhead)
    table.add_section()
    row("total", p.total_cpu, p.total_gpu, style="bold")
    budget_cells = ["budget", _mib(p.budget_ram)] + ([_mib(p.budget_gpu or 0)] if has_gpu else [])
    budget_cells.append(_mib(p.budget) if p.budget is not None else "")
    table.add_row(*budget_cells, style="dim")

    why = Text()
    for r in p.reasons:
        why.append("• ", style="dim")
        why.append(r + "\n")
    return Group(settings, Text(), table, why)


def llama_params(e: Estimate) -> str:
    """The parameters llama.cpp is given, under its own names, so a plan can be reproduced by hand."""
    return (
        f"n_ctx={e.n_ctx} type_k={e.type_k} type_v={e.type_v} flash_attn={str(e.flash_attn).lower()} "
        f"swa_full={str(e.swa_full).lower()} n_batch={e.n_batch} n_ubatch={e.n_ubatch} n_gpu_layers={e.gpu_layers}"
    )


def plan_for_path(path: str | Path, **kwargs: Any) -> Plan:
    """`plan()` for a model file: reads its header, loads no weights."""
    return plan(read_gguf(path), **kwargs)


__all__ = [
    "Budget",
    "Estimate",
    "Plan",
    "budget_for",
    "checkpoint_bytes",
    "DeviceShare",
    "describe_kind",
    "describe_placement",
    "estimate",
    "estimate_settings",
    "fits_tokens",
    "format_plan",
    "kv_row_bytes",
    "llama_params",
    "pad_ctx",
    "placement",
    "resume_cost",
    "plan",
    "plan_for_path",
    "ram_floor",
]
