"""The planner predicts llama.cpp's allocations from the GGUF header, and fits budgets.

Predictions are checked against what llama.cpp itself logs when the real test models
load (CPU build); the GPU split is checked against figures logged by a CUDA build on an
H100 (scripts/gpu_check.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from rich.console import Console

from edgechat.config import EngineSettings
from edgechat.errors import BudgetError, ConfigError
from edgechat.gguf_info import GGUFInfo, read_gguf
from edgechat.memory import GpuMemory, MemorySnapshot
from edgechat.planner import MiB, Plan, estimate, estimate_settings, format_plan, pad_ctx, plan

KV_TYPES = ("f16", "q8_0", "q4_0")
# A machine with plenty of RAM and no GPU, so that budget tests do not depend on this one.
ROOMY = MemorySnapshot(ram_total=64 << 30, ram_available=48 << 30, process_rss=100 << 20)


def _logged(settings: EngineSettings) -> dict[str, float]:
    """Load the model and return what llama.cpp logged for this load, in MiB."""
    from edgechat.engine import Engine, logged_buffers

    engine = Engine(settings)
    try:
        return logged_buffers()
    finally:
        engine.close()


# (model fixture, n_ctx, kv type, swa_full): each loaded once per session.
CASES = [("smollm2", 2048, kv, True) for kv in KV_TYPES]
CASES += [("gemma", 1024, kv, True) for kv in KV_TYPES]
CASES += [("gemma", 2048, "f16", False), ("gemma", 4096, "q8_0", False)]


@pytest.fixture(scope="module")
def measured(smollm2: Path, gemma: Path) -> dict[tuple[str, int, str, bool], tuple[GGUFInfo, EngineSettings, dict]]:
    paths = {"smollm2": smollm2, "gemma": gemma}
    out = {}
    for name, n_ctx, kv, swa_full in CASES:
        settings = EngineSettings(
            model_path=str(paths[name]), n_ctx=n_ctx, type_k=kv, type_v=kv, swa_full=swa_full, threads=2
        )
        out[(name, n_ctx, kv, swa_full)] = (read_gguf(paths[name]), settings, _logged(settings))
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}{'' if c[3] else '-swa'}")
def test_kv_prediction_matches_llama_cpp_within_2_percent(measured, case) -> None:
    info, settings, logged = measured[case]
    predicted = estimate_settings(settings, info).kv / MiB
    assert predicted == pytest.approx(logged["KV"], rel=0.02)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}{'' if c[3] else '-swa'}")
def test_total_prediction_matches_llama_cpp_within_10_percent(measured, case) -> None:
    info, settings, logged = measured[case]
    e = estimate_settings(settings, info)
    assert e.compute / MiB == pytest.approx(logged["compute"], rel=0.10)
    assert e.buffers / MiB == pytest.approx(logged["total"], rel=0.10)
    assert e.total > e.buffers  # the runtime overhead comes on top


def test_gemma_compute_buffer_is_dominated_by_its_vocabulary(measured) -> None:
    info, settings, logged = measured[("gemma", 1024, "f16", True)]
    # 262,144 logits x 512 tokens x 4 bytes = 512 MiB; llama.cpp logs ~514.
    assert logged["compute"] == pytest.approx(514.5, abs=2)
    assert estimate_settings(settings, info).compute / MiB == pytest.approx(logged["compute"], rel=0.02)


def test_sliding_window_cache_without_swa_full_is_window_plus_ubatch(gemma: Path) -> None:
    info = read_gguf(gemma)
    full = estimate(info, n_ctx=8192, swa_full=True)
    small = estimate(info, n_ctx=8192, swa_full=False)
    # llama-kv-cache-iswa.cpp: GGML_PAD(min(n_ctx, n_swa + n_ubatch), 256) = 1024 cells.
    assert small.kv_cells_swa == 1024
    assert full.kv_cells_swa == 8192
    # 3 dense layers x 8192 cells + 15 SWA layers x 1024 cells, 1 KiB per cell (f16, 256-dim K+V).
    assert small.kv == (3 * 8192 + 15 * 1024) * 1024
    assert small.kv_bytes_per_token == 3 * 1024


def test_context_is_padded_like_llama_cpp(smollm2: Path) -> None:
    info = read_gguf(smollm2)
    assert pad_ctx(1000) == 1024
    assert estimate(info, n_ctx=1000).n_ctx == 1024
    # SmolLM2: 30 layers x 3 KV heads x (64 + 64) x 2 bytes = 23,040 bytes per token (DESIGN.md).
    assert estimate(info, n_ctx=1024).kv_bytes_per_token == 23_040
    assert estimate(info, n_ctx=1024, type_k="q8_0", type_v="q8_0").kv_bytes_per_token == 12_240


def test_gpu_split_matches_a_cuda_build(gemma: Path, smollm2: Path) -> None:
    """Figures logged by llama-cpp-python 0.3.36 built with CUDA on an H100 (n_ctx 2048, f16, swa_full on)."""
    g = read_gguf(gemma)
    # --gpu-layers 1 moves only the output layer: Gemma's tied embeddings are copied up.
    one = estimate(g, n_ctx=2048, gpu_layers=1, gpu_offload=True, swa_full=True)
    assert one.weights_gpu / MiB == pytest.approx(170.00, abs=0.1)
    assert one.kv_gpu == 0
    nine = estimate(g, n_ctx=2048, gpu_layers=9, gpu_offload=True, swa_full=True)
    assert nine.weights_gpu / MiB == pytest.approx(199.36, abs=0.1)
    assert nine.weights_cpu / MiB == pytest.approx(205.82, abs=0.1)
    assert nine.kv_gpu / MiB == pytest.approx(16.0, abs=0.01)
    assert nine.compute_gpu / MiB == pytest.approx(514.50, rel=0.02)
    assert nine.compute_cpu / MiB == pytest.approx(12.51, rel=0.05)  # CUDA_Host: graph inputs only
    # --gpu-layers 0 on a GPU build: the output matmul still runs on the GPU (op offload),
    # so its compute buffer holds the logits and a copy of the output matrix.
    zero = estimate(g, n_ctx=2048, gpu_layers=0, gpu_offload=True, swa_full=True)
    assert zero.weights_gpu == 0
    assert zero.compute_gpu / MiB == pytest.approx(684.28, rel=0.02)
    s = read_gguf(smollm2)
    all_layers = estimate(s, n_ctx=8192, gpu_layers=-1, gpu_offload=True)
    assert all_layers.gpu_layers == 31
    assert all_layers.weights_gpu / MiB == pytest.approx(92.17, rel=0.01)
    assert all_layers.kv_gpu / MiB == pytest.approx(180.0, abs=0.01)
    assert all_layers.compute_gpu / MiB == pytest.approx(165.26, rel=0.02)
    # Without a GPU backend llama.cpp keeps every layer on the CPU whatever is asked.
    cpu = estimate(s, n_ctx=2048, gpu_layers=20, gpu_offload=False)
    assert cpu.gpu_layers == 0 and cpu.total_gpu == 0


def test_roomy_budget_keeps_the_trained_context_and_f16(gemma: Path) -> None:
    p = plan(read_gguf(gemma), snapshot=ROOMY)
    assert (p.n_ctx, p.type_k, p.type_v, p.flash_attn, p.gpu_layers) == (32768, "f16", "f16", False, 0)
    assert p.max_ctx_that_fits == 32768
    assert any("trained context" in r for r in p.reasons)
    assert any("no GPU" in r for r in p.reasons)


def test_small_budget_quantizes_the_cache_before_shrinking_the_context(smollm2: Path) -> None:
    info = read_gguf(smollm2)
    f16 = plan(info, snapshot=ROOMY)
    assert (f16.n_ctx, f16.type_k) == (8192, "f16")
    p = plan(info, snapshot=ROOMY, budget_bytes=400 * MiB)
    assert p.n_ctx == 8192
    assert (p.type_k, p.type_v, p.flash_attn) == ("q8_0", "q8_0", True)
    assert p.total <= 400 * MiB < f16.total
    assert any(r.startswith("KV cache q8_0") for r in p.reasons)
    assert any("flash attention on" in r for r in p.reasons)


def test_tighter_budget_gives_a_smaller_context_and_says_why(smollm2: Path) -> None:
    p = plan(read_gguf(smollm2), snapshot=ROOMY, budget_bytes=150 * MiB)
    assert 512 <= p.n_ctx < 8192
    assert p.type_k == "q4_0"
    assert p.total <= 150 * MiB
    assert p.max_ctx_that_fits == p.n_ctx
    assert any("not 8,192" in r for r in p.reasons)


def test_ctx_cap_and_fixed_kv_type_are_respected(gemma: Path) -> None:
    p = plan(read_gguf(gemma), snapshot=ROOMY, n_ctx=3000, kv_type="q4_0")
    assert (p.n_ctx, p.type_k, p.type_v, p.flash_attn) == (3072, "q4_0", "q4_0", True)
    assert any("your --ctx" in r for r in p.reasons)


def test_impossible_budget_raises_with_what_is_needed(gemma: Path) -> None:
    with pytest.raises(BudgetError) as err:
        plan(read_gguf(gemma), snapshot=ROOMY, budget_bytes=200 * MiB)
    assert "needs at least" in err.value.message and "200.0 MiB" in err.value.message
    assert err.value.hint


def test_quantized_v_without_flash_attention_is_a_config_error(smollm2: Path) -> None:
    with pytest.raises(ConfigError):
        plan(read_gguf(smollm2), snapshot=ROOMY, kv_type="q8_0", flash_attn=False)


def test_gpu_plan_offloads_what_fits_the_vram(smollm2: Path) -> None:
    info = read_gguf(smollm2)
    big = MemorySnapshot(64 << 30, 48 << 30, 1 << 20, (GpuMemory(0, "test GPU", 80 << 30, 79 << 30, 1 << 30),))
    p = plan(info, snapshot=big, gpu_offload=True)
    assert p.gpu_layers == info.n_layer + 1 and p.type_k == "f16"
    # 1000 MiB free, 512 MiB margin: the full context fits only with fewer layers or a smaller cache.
    small = MemorySnapshot(64 << 30, 48 << 30, 1 << 20, (GpuMemory(0, "test GPU", 2 << 30, 1000 << 20, 1048 << 20),))
    q = plan(info, snapshot=small, gpu_offload=True, kv_type="f16")
    assert q.n_ctx == 8192
    assert 0 < q.gpu_layers < info.n_layer + 1
    assert q.total_gpu <= q.budget_gpu
    assert any("layers on the GPU" in r for r in q.reasons)


def test_plan_is_json_and_loads_as_planned(smollm2: Path) -> None:
    from edgechat.engine import Engine

    p = plan(read_gguf(smollm2), snapshot=ROOMY, n_ctx=1024, kv_type="q8_0")
    assert isinstance(p, Plan)
    data = json.loads(json.dumps(asdict(p)))
    assert data["n_ctx"] == 1024 and data["type_v"] == "q8_0" and isinstance(data["reasons"], list)
    settings = p.engine_settings(smollm2, threads=2)
    assert settings.use_flash_attn and settings.n_ctx == 1024
    engine = Engine(settings)
    try:
        assert engine.n_ctx == p.n_ctx
    finally:
        engine.close()


def test_format_plan_renders_a_table(gemma: Path) -> None:
    console = Console(record=True, width=120)
    console.print(format_plan(plan(read_gguf(gemma), snapshot=ROOMY, budget_bytes=1000 * MiB)))
    text = console.export_text()
    assert "KV cache" in text and "compute buffer" in text and "budget" in text


def test_plan_command_prints_the_breakdown_and_the_llama_cpp_settings(home: Path, gemma: Path) -> None:
    from .conftest import run_cli

    args = ("plan", "-m", str(gemma), "--ctx", "4096", "--kv-type", "q8_0", "--budget-mb", "2000")
    shown = run_cli(*args, home=home)
    assert shown.returncode == 0, shown.stderr
    for word in ("KV cache", "compute buffer", "weights", "total", "budget"):
        assert word in shown.stdout
    assert (
        "n_ctx=4096 type_k=q8_0 type_v=q8_0 flash_attn=true swa_full=false n_batch=512 n_ubatch=512 n_gpu_layers=0"
        in " ".join(shown.stdout.split())  # rich wraps the line to the terminal's width
    )
    data = json.loads(run_cli(*args, "--json", home=home).stdout)
    expected = estimate_settings(EngineSettings(str(gemma), n_ctx=4096, type_k="q8_0", type_v="q8_0"), read_gguf(gemma))
    assert data["kv"] == expected.kv and data["n_ctx"] == 4096 and data["budget"] == 2000 * MiB
    bad = run_cli("plan", "-m", str(gemma), "--budget-mb", "100", home=home)
    assert bad.returncode != 0 and "needs at least" in bad.stderr and "Traceback" not in bad.stderr


def test_loading_under_a_tight_budget_says_what_it_gave_up(home: Path, smollm2: Path) -> None:
    from edgechat import Runtime

    notices: list[str] = []
    with Runtime(model=str(smollm2), home=home, threads=2, budget_mb=400, on_notice=notices.append) as rt:
        engine = rt.load()
        assert engine.settings.type_k == "q8_0"  # f16 at the trained 8,192 tokens is over 400 MiB
    assert len(notices) == 1 and "KV cache q8_0" in notices[0] and "over the budget" in notices[0]
    with Runtime(model=str(smollm2), home=home, threads=2, ctx=1024, on_notice=notices.append) as rt:
        rt.load()
    assert len(notices) == 1  # nothing given up: nothing said
