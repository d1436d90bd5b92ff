"""Bad input gets one line naming the problem and the fix, a non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgechat.errors import ModelError
from edgechat.gguf_info import read_gguf

from .conftest import GREEDY, run_cli


def _one_line_error(p) -> str:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ")
    assert " — " in lines[0]  # the problem, then the fix
    return lines[0]


@pytest.fixture()
def truncated(tmp_path: Path, smollm2: Path) -> Path:
    out = tmp_path / "cut.gguf"
    with smollm2.open("rb") as src:
        out.write_bytes(src.read(smollm2.stat().st_size // 2))
    return out


def test_missing_model_file(home):
    line = _one_line_error(run_cli("generate", "hi", "-m", "/nonexistent/model.gguf", home=home))
    assert "no such model file" in line


def test_file_that_is_not_gguf(home, tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("just some text, not a model" * 10)
    line = _one_line_error(run_cli("generate", "hi", "-m", str(bogus), home=home))
    assert "not a GGUF" in line


def test_truncated_gguf(home, truncated):
    line = _one_line_error(run_cli("generate", "hi", "-m", str(truncated), home=home))
    assert "truncated" in line


def test_truncated_gguf_detected_from_the_header(truncated):
    with pytest.raises(ModelError, match="truncated"):
        read_gguf(truncated)


def test_unknown_registry_name(home):
    line = _one_line_error(run_cli("generate", "hi", "-m", "no-such-model-xyz", home=home))
    assert "models list" in line or "unknown" in line


def test_quantized_v_cache_with_flash_attention_forced_off(home, smollm2):
    line = _one_line_error(
        run_cli("generate", "hi", "-m", str(smollm2), "--kv-type", "q4_0", "--flash-attn", "off", *GREEDY, home=home)
    )
    assert "flash attention" in line


def test_unknown_kv_type(home, smollm2):
    line = _one_line_error(run_cli("generate", "hi", "-m", str(smollm2), "--kv-type", "q5_9", home=home))
    assert "q5_9" in line


def test_prompt_longer_than_the_context(home, smollm2):
    long_prompt = "word " * 2000
    line = _one_line_error(run_cli("generate", long_prompt, "-m", str(smollm2), "--ctx", "256", *GREEDY, home=home))
    assert "context" in line


def test_unknown_conversation(home, smollm2):
    line = _one_line_error(run_cli("send", "hi", "-c", "deadbeef", "-m", str(smollm2), home=home))
    assert "conversations list" in line


def test_send_needs_a_target(home):
    line = _one_line_error(run_cli("send", "hi", home=home))
    assert "--new" in line


def test_debug_shows_the_traceback(home):
    p = run_cli("--debug", "generate", "hi", "-m", "/nonexistent/model.gguf", home=home)
    assert p.returncode != 0
    assert "Traceback" in p.stderr
