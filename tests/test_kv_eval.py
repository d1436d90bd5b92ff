"""`edgechat kv-eval`: an f16 cache against itself is exact; a q4_0 cache diverges, measurably and finitely."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .conftest import run_cli

FIELDS = {
    "kv_type", "type_k", "type_v", "perplexity", "ppl_ratio", "kl_mean", "kl_median", "kl_p99", "kl_max",
    "top1_agreement", "eval_s",
}  # fmt: skip


def _eval(model: Path, home: Path, *args: str) -> dict:
    r = run_cli("kv-eval", "-m", str(model), "--threads", "2", *args, "--json", home=home)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_f16_against_itself_is_exact_and_q4_0_diverges(smollm2: Path, home: Path) -> None:
    report = _eval(smollm2, home, "--tokens", "128", "--kv-types", "f16,q4_0")
    assert report["tokens"] == 128 and report["scored_positions"] == 127
    assert report["flash_attn"] is True  # every cache alike, so only the KV type differs
    assert report["model_sha256"].startswith("b179c952")
    ref = report["reference"]
    f16, q4 = report["results"]
    for row in (ref, f16, q4):
        assert set(row) == FIELDS
        assert math.isfinite(row["perplexity"]) and row["perplexity"] > 1
        assert 0.0 <= row["top1_agreement"] <= 1.0
        assert 0.0 <= row["kl_median"] <= row["kl_p99"] <= row["kl_max"]
    assert (ref["kl_mean"], ref["top1_agreement"], ref["ppl_ratio"]) == (0.0, 1.0, 1.0)
    # A second f16 context on the same tokens computes the same logits: a determinism check.
    assert f16["kl_mean"] <= 1e-9 and f16["top1_agreement"] == 1.0
    assert f16["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-9)
    assert q4["kv_type"] == "q4_0" and q4["kl_mean"] > 0.0
    assert q4["kl_max"] < math.inf and q4["top1_agreement"] < 1.0


def test_a_user_text_and_a_k_only_quantized_cache(smollm2: Path, home: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    report = _eval(smollm2, home, "--text", str(text), "--tokens", "64", "--kv-types", "q4_0/f16")
    assert report["text_source"] == str(text) and report["tokens"] == 64
    (row,) = report["results"]
    assert (row["kv_type"], row["type_k"], row["type_v"]) == ("q4_0/f16", "q4_0", "f16")
    assert row["kl_mean"] >= 0.0


def test_a_text_too_short_to_score_is_a_one_line_error(smollm2: Path, home: Path, tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("Too short.", encoding="utf-8")
    r = run_cli("kv-eval", "-m", str(smollm2), "--text", str(text), "--threads", "2", home=home)
    assert r.returncode != 0
    assert "error: the text has only" in r.stderr and "Traceback" not in r.stderr


def test_gemma_sliding_window_model(gemma: Path, home: Path) -> None:
    report = _eval(gemma, home, "--tokens", "64", "--kv-types", "q8_0")
    (q8,) = report["results"]
    assert math.isfinite(q8["perplexity"]) and q8["perplexity"] > 1
    assert 0.0 <= q8["kl_mean"] < 1.0 and 0.0 <= q8["top1_agreement"] <= 1.0
