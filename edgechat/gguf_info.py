"""What a GGUF file says about itself, read from its header without loading weights.

The planner sizes memory from this and the engine validates files with it before
llama.cpp sees them, so a truncated download is a clear error instead of a crash.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ModelError

_MAGIC = b"GGUF"
# llama-arch.cpp llm_arch_is_recurrent / llm_arch_is_hybrid (llama.cpp as vendored in 0.3.36).
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
HYBRID_ARCHS = frozenset({
    "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe",
    "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen35", "qwen35moe", "qwen4exp",
    "deepseek4", "minimax-01",
})  # fmt: skip
# Hybrids whose attention layers are every n-th one (`full_attention_interval`).
_INTERVAL_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe", "qwen4exp", "minimax-01"})
_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}  # fmt: skip
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
# Arrays longer than this (token lists, merges) are skipped over, only their length kept.
_KEEP_ARRAY = 4096

# ggml type id -> (elements per block, bytes per block), from ggml.h's type table.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22), 7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 9: ("q8_1", 32, 36),
    10: ("q2_k", 256, 84), 11: ("q3_k", 256, 110), 12: ("q4_k", 256, 144),
    13: ("q5_k", 256, 176), 14: ("q6_k", 256, 210), 15: ("q8_k", 256, 292),
    16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74), 18: ("iq3_xxs", 256, 98),
    19: ("iq1_s", 256, 50), 20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110),
    22: ("iq2_s", 256, 82), 23: ("iq4_xs", 256, 136), 24: ("i8", 1, 1), 25: ("i16", 1, 2),
    26: ("i32", 1, 4), 27: ("i64", 1, 8), 28: ("f64", 1, 8), 29: ("iq1_m", 256, 56),
    30: ("bf16", 1, 2), 34: ("tq1_0", 256, 54), 35: ("tq2_0", 256, 66),
    39: ("mxfp4", 32, 17),
}  # fmt: skip


class TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type_id, (f"type{self.type_id}", 0, 0))[0]


@dataclass(frozen=True)
class GGUFInfo:
    """The model facts edgechat needs, plus the raw metadata for anything else."""

    path: Path
    file_size: int
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    data_offset: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped key, e.g. get("block_count") -> llama.block_count."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", self.path.stem))

    @property
    def n_layer(self) -> int:
        return int(self.get("block_count", 0))

    @property
    def n_embd(self) -> int:
        return int(self.get("embedding_length", 0))

    @property
    def n_head(self) -> int:
        return _first(self.get("attention.head_count", 0))

    def _head_kv_raw(self) -> list[int]:
        value = self.get("attention.head_count_kv", self.get("attention.head_count", 0))
        if isinstance(value, list):
            return [int(v) for v in value][: self.n_layer] + [0] * max(0, self.n_layer - len(value))
        return [int(value)] * self.n_layer

    def n_head_kv_per_layer(self) -> list[int]:
        """KV heads of each layer's cache: 0 for a layer without one (recurrent or MLP-only).

        GGUF stores a scalar or a per-layer array; a qwen35-style hybrid stores a scalar and
        says which layers attend with `full_attention_interval` instead.
        """
        return [h if a else 0 for h, a in zip(self._head_kv_raw(), self.attention_layers(), strict=True)]

    @property
    def n_head_kv(self) -> int:
        heads = self.n_head_kv_per_layer()
        return max(heads) if heads else 0

    @property
    def head_dim_k(self) -> int:
        default = self.n_embd // self.n_head if self.n_head else 0
        return int(self.get("attention.key_length", default))

    @property
    def head_dim_v(self) -> int:
        default = self.n_embd // self.n_head if self.n_head else 0
        return int(self.get("attention.value_length", default))

    @property
    def context_length(self) -> int:
        return int(self.get("context_length", 0))

    @property
    def sliding_window(self) -> int:
        return int(self.get("attention.sliding_window", 0) or 0)

    def swa_layers(self) -> list[bool]:
        """Which layers use the sliding window, as llama.cpp decides for this architecture."""
        n = self.n_layer
        if not self.sliding_window:
            return [False] * n
        pattern = self.get("attention.sliding_window_pattern")
        if isinstance(pattern, list):
            return [bool(p) for p in pattern][:n]
        # llama.cpp's set_swa_pattern(n): every n-th layer is dense, the rest are SWA.
        if self.architecture in HYBRID_ARCHS:
            # models/lfm2.cpp: with a window set, every attention layer slides.
            return [not r for r in self.recurrent_layers()]
        period = {"gemma3": 6, "gemma2": 2, "cohere2": 4, "gemma3n": 5}.get(self.architecture)
        if isinstance(pattern, int) and pattern > 0:
            period = pattern
        if not period:
            return [True] * n
        return [(i % period) < (period - 1) for i in range(n)]

    # --- memory kind: what llama.cpp's KV memory looks like for this model ---------------

    @property
    def memory_kind(self) -> str:
        """ "dense", "swa", "hybrid" or "recurrent": how llama.cpp builds this model's memory.

        Decides what a trim, a shift and a context checkpoint can do (llama-arch.cpp
        llm_arch_is_recurrent / llm_arch_is_hybrid; SWA when a layer uses the window).
        """
        arch = self.architecture
        if arch in RECURRENT_ARCHS:
            return "recurrent"
        if arch in HYBRID_ARCHS:
            return "hybrid"
        if self.sliding_window and any(self.swa_layers()):
            return "swa"
        return "dense"

    @property
    def n_swa(self) -> int:
        """The sliding window in tokens when some attention layer uses it, else 0."""
        return self.sliding_window if any(self.swa_layers()) else 0

    def recurrent_layers(self) -> list[bool]:
        """Which layers keep a recurrent state (conv / SSM / linear attention), as llama.cpp decides."""
        n = self.n_layer
        arch = self.architecture
        if arch in RECURRENT_ARCHS:
            return [True] * n
        if arch not in HYBRID_ARCHS:
            return [False] * n
        explicit = self.get("attention.recurrent_layers")
        if isinstance(explicit, list):
            return [bool(v) for v in explicit][:n] + [False] * max(0, n - len(explicit))
        if arch in _INTERVAL_ARCHS:
            # models/qwen35.cpp: layer i is recurrent unless (i + 1) % interval == 0 (default 4).
            interval = int(self.get("full_attention_interval", 4) or 4)
            return [(i + 1) % interval != 0 for i in range(n)]
        if arch == "falcon-h1":
            return [True] * n  # every layer has both attention and an SSM
        heads = self._head_kv_raw()
        ff = self.get("feed_forward_length")
        if arch.startswith("nemotron_h") and isinstance(ff, list):
            return [h == 0 and int(f) == 0 for h, f in zip(heads, ff, strict=False)]
        return [h == 0 for h in heads]

    def attention_layers(self) -> list[bool]:
        """Which layers have a KV cache (the rest are recurrent, or MLP-only)."""
        n = self.n_layer
        arch = self.architecture
        if arch in RECURRENT_ARCHS:
            return [False] * n
        heads = self._head_kv_raw()
        if arch == "falcon-h1":
            return [h > 0 for h in heads]
        recr = self.recurrent_layers()
        ff = self.get("feed_forward_length")
        if arch.startswith("nemotron_h") and isinstance(ff, list):
            return [h > 0 and int(f) == 0 and not r for h, f, r in zip(heads, ff, recr, strict=False)]
        return [h > 0 and not r for h, r in zip(heads, recr, strict=False)]

    @property
    def n_embd_r(self) -> int:
        """Values of a recurrent layer's rolling (conv / token-shift) state (llama-hparams.cpp n_embd_r)."""
        wkv = int(self.get("wkv.head_size", 0) or 0)
        if wkv:
            return int(self.get("token_shift_count", 2) or 2) * self.n_embd
        l_cache = int(self.get("shortconv.l_cache", 0) or 0)
        if l_cache:
            return self.n_embd * (l_cache - 1)
        d_conv = int(self.get("ssm.conv_kernel", 0) or 0)
        d_inner = int(self.get("ssm.inner_size", 0) or 0)
        d_state = int(self.get("ssm.state_size", 0) or 0)
        n_group = int(self.get("ssm.group_count", 0) or 0)
        return max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)

    @property
    def n_embd_s(self) -> int:
        """Values of a recurrent layer's SSM / wkv state (llama-hparams.cpp n_embd_s)."""
        wkv = int(self.get("wkv.head_size", 0) or 0)
        if wkv:
            return self.n_embd * wkv
        return int(self.get("ssm.state_size", 0) or 0) * int(self.get("ssm.inner_size", 0) or 0)

    def recurrent_state_bytes(self) -> int:
        """One sequence's recurrent state: f32 r and s rows for every recurrent layer.

        This is llama.cpp's "RS buffer" (llama-memory-recurrent.cpp, one row per sequence)
        and also what a PARTIAL_ONLY context checkpoint of a hybrid holds.
        """
        return sum(self.recurrent_layers()) * (self.n_embd_r + self.n_embd_s) * 4

    @property
    def vocab_size(self) -> int:
        return int(self.metadata.get("tokenizer.ggml.tokens.length", 0)) or int(self.get("vocab_size", 0))

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return str(value) if value else None

    @property
    def weights_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def file_type(self) -> str:
        types: dict[str, int] = {}
        for t in self.tensors:
            types[t.type_name] = types.get(t.type_name, 0) + t.nbytes
        return max(types, key=lambda k: types[k]) if types else "unknown"

    def layer_bytes(self) -> list[int]:
        """Weight bytes of each repeating block (blk.N.*), the unit GPU offload moves."""
        sizes = [0] * self.n_layer
        for t in self.tensors:
            if t.name.startswith("blk."):
                idx = int(t.name.split(".", 2)[1])
                if idx < len(sizes):
                    sizes[idx] += t.nbytes
        return sizes

    def summary(self) -> dict[str, Any]:
        """The fields `models info` prints."""
        return {
            "path": str(self.path),
            "name": self.name,
            "architecture": self.architecture,
            "file_size": self.file_size,
            "file_type": self.file_type,
            "parameters": sum(_numel(t.shape) for t in self.tensors),
            "layers": self.n_layer,
            "embedding": self.n_embd,
            "heads": self.n_head,
            "kv_heads": self.n_head_kv,
            "head_dim_k": self.head_dim_k,
            "head_dim_v": self.head_dim_v,
            "context_length": self.context_length,
            "sliding_window": self.sliding_window,
            "memory_kind": self.memory_kind,
            "vocab_size": self.vocab_size,
            "chat_template": self.chat_template is not None,
        }


def _first(value: Any) -> int:
    if isinstance(value, list):
        return int(max(value)) if value else 0
    return int(value)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Reader:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise EOFError
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.u64()
        self.pos += n
        if self.pos > len(self.buf):
            raise EOFError

    def value(self, vtype: int, key: str, meta: dict[str, Any]) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.u32(), self.u64()
            meta[f"{key}.length"] = count
            if count > _KEEP_ARRAY:
                self._skip_array(etype, count)
                return None
            if etype in _SCALARS:  # one unpack for the whole array, not one per element
                fmt, size = _SCALARS[etype]
                return list(struct.unpack(f"<{count}{fmt[1]}", self.take(size * count)))
            return [self.value(etype, key, {}) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype}")
        fmt, size = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(size))[0]

    def _skip_array(self, etype: int, count: int) -> None:
        """Step over an array by byte length: the tokenizer's string lists hold ~100k entries,
        and a method call per entry cost 0.1 s of every cold start (issue 12)."""
        if etype == _STRING:
            buf, pos, end = self.buf, self.pos, len(self.buf)
            length = _U64.unpack_from
            for _ in range(count):
                if pos + 8 > end:
                    raise EOFError
                pos += 8 + length(buf, pos)[0]
            if pos > end:
                raise EOFError
            self.pos = pos
        elif etype in _SCALARS:
            self.pos += _SCALARS[etype][1] * count
            if self.pos > len(self.buf):
                raise EOFError
        else:
            raise ValueError(f"unsupported GGUF array type {etype}")


def read_gguf(path: str | Path) -> GGUFInfo:
    """Parse the header; raise ModelError for a missing, foreign or truncated file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model file not found: {p}", "check the path, or pull it with `edgechat models pull NAME`")
    if p.is_dir():
        raise ModelError(f"{p} is a directory, not a GGUF file", "pass the .gguf file inside it")
    size = p.stat().st_size
    if size < 24:
        raise ModelError(f"{p} is not a GGUF model (too small)", "download the model again")
    with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != _MAGIC:
            raise ModelError(f"{p} is not a GGUF model file", "edgechat runs .gguf models; convert or download one")
        r = _Reader(buf)
        r.pos = 4
        try:
            version = r.u32()
            if version not in (2, 3):
                raise ModelError(f"{p}: unsupported GGUF version {version}", "use a GGUF v3 file")
            n_tensors, n_kv = r.u64(), r.u64()
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = r.string()
                meta[key] = r.value(r.u32(), key, meta)
            raw: list[tuple[str, tuple[int, ...], int, int]] = []
            for _ in range(n_tensors):
                name = r.string()
                dims = tuple(r.u64() for _ in range(r.u32()))
                raw.append((name, dims, r.u32(), r.u64()))
        except (EOFError, ValueError, struct.error) as exc:
            raise ModelError(
                f"{p}: the GGUF header is damaged or cut short ({exc or 'truncated'})", "download the model again"
            ) from exc
        align = int(meta.get("general.alignment", 32))
        data_offset = (r.pos + align - 1) // align * align
    tensors = []
    for name, dims, type_id, offset in raw:
        blck, tsize = GGML_TYPES.get(type_id, ("?", 0, 0))[1:]
        nbytes = _numel(dims) // blck * tsize if blck else 0
        tensors.append(TensorInfo(name, dims, type_id, offset, nbytes))
    end = max((data_offset + t.offset + t.nbytes for t in tensors), default=data_offset)
    if end > size:
        raise ModelError(
            f"{p} is truncated: {size:,} bytes of {end:,}",
            "the download was interrupted; run `edgechat models pull` again or re-download it",
        )
    return GGUFInfo(p, size, version, meta, tuple(tensors), data_offset)
