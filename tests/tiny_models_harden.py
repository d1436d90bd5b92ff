"""Tiny random-weight hybrid GGUFs for the planner tests (harden branch stand-in).

The lead's tests/tiny_models.py builds the same two architectures; this file exists only so
the planner tests could run before that one was merged, and takes the same arguments plus
`interval` (qwen35's full_attention_interval), so the two can be folded into one.
Keys follow llama.cpp's tests/test-llama-archs.cpp; shapes follow src/models/qwen35.cpp and
lfm2.cpp of the vendored build (see notes/llamacpp-memory.md A4).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

N_VOCAB, N_EMBD, N_HEAD, HEAD_DIM, N_FF, N_LAYER = 128, 64, 2, 32, 96, 4


def _writer(path: Path, arch: str, ctx: int) -> Any:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (
        ("context_length", ctx), ("embedding_length", N_EMBD), ("block_count", N_LAYER),
        ("feed_forward_length", N_FF),
    ):  # fmt: skip
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_tokenizer_model("test")
    w.add_token_list([f"t{i:02x}".encode() for i in range(N_VOCAB)])
    w.add_token_scores([0.0] * N_VOCAB)
    return w


def _rand(seed: int) -> Callable[..., np.ndarray]:
    rng = np.random.default_rng(seed)

    def t(*ne: int, scale: float = 0.05, offset: float = 0.0) -> np.ndarray:
        # numpy shapes are ggml's ne reversed
        return (offset + scale * rng.standard_normal(tuple(reversed(ne)))).astype(np.float32)

    return t


def _close(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_qwen35(path: Path, *, seed: int = 0, ctx: int = 4096, interval: int = 2) -> Path:
    """Every `interval`-th layer attends (scalar head_count_kv); the others are gated delta-net."""
    arch, state, heads_v, heads_k, conv = "qwen35", 32, 2, 2, 4
    key_dim, value_dim = state * heads_k, state * heads_v
    w = _writer(path, arch, ctx)
    for key, value in (
        ("attention.head_count", N_HEAD), ("attention.head_count_kv", 1), ("attention.key_length", HEAD_DIM),
        ("attention.value_length", HEAD_DIM), ("full_attention_interval", interval), ("ssm.conv_kernel", conv),
        ("ssm.inner_size", value_dim), ("ssm.state_size", state), ("ssm.time_step_rank", heads_v),
        ("ssm.group_count", heads_k),
    ):  # fmt: skip
        w.add_uint32(f"{arch}.{key}", value)
    w.add_array(f"{arch}.rope.dimension_sections", [HEAD_DIM // 4] * 4)
    t = _rand(seed)
    w.add_tensor("token_embd.weight", t(N_EMBD, N_VOCAB, scale=0.5))
    w.add_tensor("output_norm.weight", t(N_EMBD, scale=0.0, offset=1.0))
    for il in range(N_LAYER):
        w.add_tensor(f"blk.{il}.attn_norm.weight", t(N_EMBD, scale=0.0, offset=1.0))
        w.add_tensor(f"blk.{il}.post_attention_norm.weight", t(N_EMBD, scale=0.0, offset=1.0))
        if (il + 1) % interval == 0:
            w.add_tensor(f"blk.{il}.attn_q.weight", t(N_EMBD, HEAD_DIM * N_HEAD * 2))
            w.add_tensor(f"blk.{il}.attn_k.weight", t(N_EMBD, HEAD_DIM))
            w.add_tensor(f"blk.{il}.attn_v.weight", t(N_EMBD, HEAD_DIM))
            w.add_tensor(f"blk.{il}.attn_output.weight", t(HEAD_DIM * N_HEAD, N_EMBD))
            w.add_tensor(f"blk.{il}.attn_q_norm.weight", t(HEAD_DIM, scale=0.0, offset=1.0))
            w.add_tensor(f"blk.{il}.attn_k_norm.weight", t(HEAD_DIM, scale=0.0, offset=1.0))
        else:
            w.add_tensor(f"blk.{il}.attn_qkv.weight", t(N_EMBD, key_dim * 2 + value_dim))
            w.add_tensor(f"blk.{il}.attn_gate.weight", t(N_EMBD, value_dim))
            w.add_tensor(f"blk.{il}.ssm_conv1d.weight", t(conv, key_dim * 2 + value_dim))
            w.add_tensor(f"blk.{il}.ssm_dt.bias", t(heads_v))
            w.add_tensor(f"blk.{il}.ssm_a", t(heads_v, scale=0.1, offset=-1.0))
            w.add_tensor(f"blk.{il}.ssm_beta.weight", t(N_EMBD, heads_v))
            w.add_tensor(f"blk.{il}.ssm_alpha.weight", t(N_EMBD, heads_v))
            w.add_tensor(f"blk.{il}.ssm_norm.weight", t(state, scale=0.0, offset=1.0))
            w.add_tensor(f"blk.{il}.ssm_out.weight", t(value_dim, N_EMBD))
        for name, ne in (("ffn_gate", (N_EMBD, N_FF)), ("ffn_up", (N_EMBD, N_FF)), ("ffn_down", (N_FF, N_EMBD))):
            w.add_tensor(f"blk.{il}.{name}.weight", t(*ne))
    _close(w)
    return path


def write_lfm2(path: Path, *, seed: int = 0, ctx: int = 4096) -> Path:
    """Even layers attend, odd ones are short convolutions (head_count_kv 0 marks them)."""
    arch, l_cache = "lfm2", 3
    heads = [N_HEAD if il % 2 == 0 else 0 for il in range(N_LAYER)]
    head_dim = N_EMBD // N_HEAD
    w = _writer(path, arch, ctx)
    w.add_array(f"{arch}.attention.head_count", [N_HEAD] * N_LAYER)
    w.add_array(f"{arch}.attention.head_count_kv", heads)
    w.add_uint32(f"{arch}.shortconv.l_cache", l_cache)
    t = _rand(seed)
    w.add_tensor("token_embd.weight", t(N_EMBD, N_VOCAB, scale=0.5))
    w.add_tensor("token_embd_norm.weight", t(N_EMBD, scale=0.0, offset=1.0))
    for il in range(N_LAYER):
        w.add_tensor(f"blk.{il}.attn_norm.weight", t(N_EMBD, scale=0.0, offset=1.0))
        w.add_tensor(f"blk.{il}.ffn_norm.weight", t(N_EMBD, scale=0.0, offset=1.0))
        if heads[il]:
            w.add_tensor(f"blk.{il}.attn_q.weight", t(N_EMBD, N_EMBD))
            w.add_tensor(f"blk.{il}.attn_k.weight", t(N_EMBD, head_dim * heads[il]))
            w.add_tensor(f"blk.{il}.attn_v.weight", t(N_EMBD, head_dim * heads[il]))
            w.add_tensor(f"blk.{il}.attn_output.weight", t(N_EMBD, N_EMBD))
            w.add_tensor(f"blk.{il}.attn_q_norm.weight", t(head_dim, scale=0.0, offset=1.0))
            w.add_tensor(f"blk.{il}.attn_k_norm.weight", t(head_dim, scale=0.0, offset=1.0))
        else:
            w.add_tensor(f"blk.{il}.shortconv.conv.weight", t(l_cache, N_EMBD))
            w.add_tensor(f"blk.{il}.shortconv.in_proj.weight", t(N_EMBD, 3 * N_EMBD))
            w.add_tensor(f"blk.{il}.shortconv.out_proj.weight", t(N_EMBD, N_EMBD))
        for name, ne in (("ffn_gate", (N_EMBD, N_FF)), ("ffn_up", (N_EMBD, N_FF)), ("ffn_down", (N_FF, N_EMBD))):
            w.add_tensor(f"blk.{il}.{name}.weight", t(*ne))
    _close(w)
    return path


WRITERS = {"qwen35": write_qwen35, "lfm2": write_lfm2}
