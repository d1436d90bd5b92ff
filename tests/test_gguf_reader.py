"""gguf_info's low-level reader: long arrays are stepped over by byte length (issue 12), nothing lost."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from edgechat.errors import ModelError
from edgechat.gguf_info import read_gguf


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv_string(key: str, value: str) -> bytes:
    return _s(key) + struct.pack("<I", 8) + _s(value)


def _kv_array(key: str, etype: int, items: bytes, count: int) -> bytes:
    return _s(key) + struct.pack("<IIQ", 9, etype, count) + items


def _gguf(tokens: int) -> bytes:
    kvs = [
        _kv_string("general.architecture", "llama"),
        _kv_array("tokenizer.ggml.tokens", 8, b"".join(_s(f"tok{i}") for i in range(tokens)), tokens),
        _kv_array("tokenizer.ggml.scores", 6, struct.pack(f"<{tokens}f", *range(tokens)), tokens),
        _kv_array("llama.attention.head_count_kv", 5, struct.pack("<3i", 2, 4, 8), 3),
        _kv_array("llama.flags", 7, struct.pack("<3?", True, False, True), 3),
        _kv_array("llama.names", 8, _s("a") + _s("bc"), 2),
        _s("llama.block_count") + struct.pack("<II", 4, 3),
    ]
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs))
    body = head + b"".join(kvs)
    return body + b"\0" * (-len(body) % 32)


def test_long_arrays_are_skipped_and_everything_after_them_is_read(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(_gguf(10_000))
    info = read_gguf(path)
    assert info.metadata["tokenizer.ggml.tokens"] is None
    assert info.metadata["tokenizer.ggml.tokens.length"] == 10_000
    assert info.metadata["tokenizer.ggml.scores.length"] == 10_000
    assert info.vocab_size == 10_000
    assert info.n_head_kv_per_layer() == [2, 4, 8]
    assert info.metadata["llama.flags"] == [True, False, True]
    assert info.metadata["llama.names"] == ["a", "bc"]
    assert info.n_layer == 3


@pytest.mark.parametrize("cut", [200, 60_000, 100_000])
def test_a_file_cut_inside_an_array_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(_gguf(10_000)[:cut])
    with pytest.raises(ModelError, match="damaged or cut short"):
        read_gguf(path)


def test_the_real_model_reads_as_before(smollm2: Path) -> None:
    info = read_gguf(smollm2)
    assert info.vocab_size == 49152
    assert info.metadata["tokenizer.ggml.merges.length"] > 40_000
    assert info.chat_template and info.n_layer == 30 and info.n_head_kv == 3
