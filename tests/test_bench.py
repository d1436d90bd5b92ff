"""`edgechat bench`: one JSON object with every figure, sane relations between them, a readable PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgechat.bench import default_lengths, load_text, parse_kv_types, strip_header
from edgechat.errors import ConfigError

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ("--lengths", "16,32,64", "--gen-tokens", "8", "--ctx", "256", "--threads", "2", "--repeats", "1")


def test_kv_types_parse_pairs_and_reject_unknown_types() -> None:
    specs = parse_kv_types("f16, q8_0,q4_0/f16,q8_0")
    assert [s.label for s in specs] == ["f16", "q8_0", "q4_0/f16"]
    assert (specs[2].type_k, specs[2].type_v) == ("q4_0", "f16")
    with pytest.raises(ConfigError):
        parse_kv_types("f16,q5_1")
    with pytest.raises(ConfigError):
        parse_kv_types(" , ")


def test_default_lengths_follow_the_context() -> None:
    assert default_lengths(4096) == (128, 512, 2048)
    assert default_lengths(1024) == (128, 512, 768)
    assert default_lengths(512) == (128, 256)


def test_bundled_text_is_licensed_and_long_enough() -> None:
    raw = (ROOT / "edgechat" / "data" / "sample_text.txt").read_text(encoding="utf-8")
    assert "Licence: Apache-2.0" in raw.split("\n\n", 1)[0]
    text, source = load_text()
    assert source.startswith("bundled:")
    assert not text.startswith("#")
    assert len(text.split()) > 4500  # about 6k tokens: room for a 2,048-token prompt and more
    assert strip_header("# a\n# b\n\nbody\n") == "body\n"


def test_bench_json_has_every_figure_and_sane_relations(smollm2: Path, home: Path, tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    r = run_cli("bench", "-m", str(smollm2), "--kv-types", "f16,q4_0", *TINY, "--plot", str(png), "--json", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # stdout holds the one object and nothing else

    assert report["model_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert report["llama_build"].startswith("llama-cpp-python ")
    assert report["threads"] == 2 and report["gpu_layers"] == 0 and report["n_ctx"] == 256
    assert report["kv_types"] == ["f16", "q4_0"] and report["prompt_lengths"] == [16, 32, 64]
    assert report["machine"]["cpu_count_logical"] >= 1 and report["machine"]["ram_total_bytes"] > 0

    kv_bytes = {}
    for res in report["results"]:
        assert res["flash_attn"] is (res["type_v"] != "f16")
        assert res["after_load"]["rss_bytes"] > res["before_load"]["rss_bytes"] > 0
        assert [p["prompt_tokens"] for p in res["prompts"]] == [16, 32, 64]
        for p in res["prompts"]:
            assert p["completion_tokens"] == 8
            assert 0 < p["ttft_s"] < 60 and p["prefill_tokens_per_s"] > 0 and p["decode_tokens_per_s"] > 0
            assert 0 < p["latency_p50_ms"] <= p["latency_p95_ms"]
            assert p["rss_peak_decode_bytes"] >= p["rss_after_prefill_bytes"] > 0
            assert p["vram_used_bytes"] is None  # CPU-only test machines
        sizes = [p["kv_bytes"] for p in res["prompts"]]
        assert sizes == sorted(sizes) and sizes[0] > 0  # more prompt, more cache
        kv_bytes[res["kv_type"]] = sizes[-1]

        resume = res["resume"]
        assert resume["prompt_tokens"] == 64 and resume["state_bytes"] > 0
        assert resume["resume_ttft_s"] < resume["reprefill_ttft_s"]
        assert resume["same_first_token"] is True

        base = res["baseline"]
        assert base["prompt_tokens"] == 32 and base["completion_tokens"] == 8
        assert base["ttft_s"] > 0 and base["decode_tokens_per_s"] > 0
        assert math.isfinite(base["ttft_ratio"]) and base["ttft_ratio"] > 0
        assert math.isfinite(base["decode_time_ratio"]) and base["decode_time_ratio"] > 0

    # q4_0 stores 18 bytes per 32 values, f16 64: the quantized cache is well under half the size.
    assert kv_bytes["q4_0"] < 0.5 * kv_bytes["f16"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_on_the_terminal(smollm2: Path, home: Path) -> None:
    r = run_cli(
        "bench", "-m", str(smollm2), "--kv-types", "q8_0", "--lengths", "16,24", "--gen-tokens", "4",
        "--ctx", "256", "--threads", "2", home=home, env={"COLUMNS": "200"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for heading in ("per prompt length", "resume from a saved state", "bare Llama.generate"):
        assert heading in r.stdout
    assert "q8_0" in r.stdout and "sha256 b179c9523d0e" in r.stdout


def test_plot_without_matplotlib_is_a_one_line_error(home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    r = run_cli("bench", "--plot", str(tmp_path / "x.png"), home=home, env={"PYTHONPATH": str(blocker)})
    assert r.returncode != 0
    assert r.stderr.strip() == "error: --plot needs matplotlib, which is not installed — pip install 'edgechat[plot]'"
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--kv-types", "q5_1"), "unknown KV cache type 'q5_1'"),
        (("--lengths", "a,b"), "--lengths 'a,b' is not a list of token counts"),
    ],
)
def test_bad_options_are_one_line_errors(home: Path, args: tuple[str, ...], needle: str) -> None:
    r = run_cli("bench", *args, home=home)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_lengths_that_overflow_the_context_say_how_to_fix_it(smollm2: Path, home: Path) -> None:
    r = run_cli("bench", "-m", str(smollm2), "--ctx", "256", "--lengths", "300", "--threads", "2", home=home)
    assert r.returncode != 0
    assert "does not fit the 256-token context" in r.stderr and "raise --ctx" in r.stderr
