"""Tiny random-weight hybrid GGUFs, built at test time (no small hybrid GGUF is on any registry).

`qwen35` (gated delta-net + attention, M-RoPE: its cache cannot shift) and `lfm2` (short
convolutions + attention: the attention part can shift, the conv state cannot be trimmed)
cover llama.cpp's hybrid memory. Both use llama.cpp's `test` tokenizer (128 tokens, text in
5-byte chunks) and no chat template, so they run through edgechat's plain-text fallback
template. The keys follow llama.cpp's own tests/test-llama-archs.cpp; the tensor shapes
follow src/models/qwen35.cpp and lfm2.cpp of the vendored build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_VOCAB = 128
N_EMBD = 64
N_HEAD = 2
HEAD_DIM = 32
N_FF = 96
N_LAYER = 4


def _tokenizer(w) -> None:  # noqa: ANN001 - gguf.GGUFWriter
    w.add_tokenizer_model("test")
    w.add_token_list([f"t{i:02x}".encode() for i in range(N_VOCAB)])
    w.add_token_scores([0.0] * N_VOCAB)


def _common(w, arch: str, ctx: int) -> None:  # noqa: ANN001
    w.add_uint32(f"{arch}.context_length", ctx)
    w.add_uint32(f"{arch}.embedding_length", N_EMBD)
    w.add_uint32(f"{arch}.block_count", N_LAYER)
    w.add_uint32(f"{arch}.feed_forward_length", N_FF)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)


def _weights(seed: int):  # noqa: ANN202
    rng = np.random.default_rng(seed)

    def t(*shape: int, scale: float = 0.05, offset: float = 0.0) -> np.ndarray:
        # numpy shapes are llama.cpp's {ne0, ne1, ...} reversed
        return (offset + scale * rng.standard_normal(tuple(reversed(shape)))).astype(np.float32)

    return t


def _ffn(w, t, il: int) -> None:  # noqa: ANN001
    w.add_tensor(f"blk.{il}.ffn_gate.weight", t(N_EMBD, N_FF))
    w.add_tensor(f"blk.{il}.ffn_up.weight", t(N_EMBD, N_FF))
    w.add_tensor(f"blk.{il}.ffn_down.weight", t(N_FF, N_EMBD))


def write_qwen35(path: Path, *, seed: int = 0, ctx: int = 4096, interval: int = 2) -> Path:
    """Every `interval`-th layer attends (layers 1 and 3 by default), the others are gated delta-net.

    Real Qwen3.5 models use an interval of 4.
    """
    import gguf

    arch = "qwen35"
    state, v_heads, k_heads, conv = 32, 2, 2, 4
    key_dim, value_dim = state * k_heads, state * v_heads
    w = gguf.GGUFWriter(str(path), arch)
    _common(w, arch, ctx)
    w.add_uint32(f"{arch}.attention.head_count", N_HEAD)
    w.add_uint32(f"{arch}.attention.head_count_kv", 1)
    w.add_uint32(f"{arch}.attention.key_length", HEAD_DIM)
    w.add_uint32(f"{arch}.attention.value_length", HEAD_DIM)
    w.add_uint32(f"{arch}.full_attention_interval", interval)
    w.add_array(f"{arch}.rope.dimension_sections", [HEAD_DIM // 4] * 4)
    w.add_uint32(f"{arch}.ssm.conv_kernel", conv)
    w.add_uint32(f"{arch}.ssm.inner_size", value_dim)
    w.add_uint32(f"{arch}.ssm.state_size", state)
    w.add_uint32(f"{arch}.ssm.time_step_rank", v_heads)
    w.add_uint32(f"{arch}.ssm.group_count", k_heads)
    _tokenizer(w)
    t = _weights(seed)
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
            w.add_tensor(f"blk.{il}.ssm_dt.bias", t(v_heads))
            w.add_tensor(f"blk.{il}.ssm_a", t(v_heads, scale=0.1, offset=-1.0))
            w.add_tensor(f"blk.{il}.ssm_beta.weight", t(N_EMBD, v_heads))
            w.add_tensor(f"blk.{il}.ssm_alpha.weight", t(N_EMBD, v_heads))
            w.add_tensor(f"blk.{il}.ssm_norm.weight", t(state, scale=0.0, offset=1.0))
            w.add_tensor(f"blk.{il}.ssm_out.weight", t(value_dim, N_EMBD))
        _ffn(w, t, il)
    _finish(w)
    return path


def write_lfm2(path: Path, *, seed: int = 0, ctx: int = 4096) -> Path:
    """Layers 1 and 3 are short convolutions (head_count_kv 0 marks them), 0 and 2 attend."""
    import gguf

    arch = "lfm2"
    l_cache = 3
    heads = [N_HEAD if il % 2 == 0 else 0 for il in range(N_LAYER)]
    w = gguf.GGUFWriter(str(path), arch)
    _common(w, arch, ctx)
    w.add_array(f"{arch}.attention.head_count", [N_HEAD] * N_LAYER)
    w.add_array(f"{arch}.attention.head_count_kv", heads)
    w.add_uint32(f"{arch}.shortconv.l_cache", l_cache)
    _tokenizer(w)
    t = _weights(seed)
    head_dim = N_EMBD // N_HEAD
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
        _ffn(w, t, il)
    _finish(w)
    return path


def _finish(w) -> None:  # noqa: ANN001
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


WRITERS = {"qwen35": write_qwen35, "lfm2": write_lfm2}
