"""The planner on every memory kind: dense, sliding-window, hybrid; repacked weights; checkpoints.

Each figure is checked against what llama.cpp itself logs (or returns) when the model loads
on this CPU build. The hybrids are tiny random-weight GGUFs built at test time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgechat.config import EngineSettings
from edgechat.errors import ConfigError
from edgechat.gguf_info import read_gguf
from edgechat.memory import MemorySnapshot, cpu_flags
from edgechat.planner import MiB, estimate_settings, plan, resume_cost

from .conftest import run_cli
from .tiny_models import write_lfm2, write_qwen35

ROOMY = MemorySnapshot(ram_total=64 << 30, ram_available=48 << 30, process_rss=100 << 20)
FLAGS = cpu_flags()  # what this machine's llama.cpp repacks depends on it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return {
        "qwen35": write_qwen35(d / "tiny-qwen35.gguf"),
        "qwen35-i4": write_qwen35(d / "tiny-qwen35-i4.gguf", interval=4),
        "lfm2": write_lfm2(d / "tiny-lfm2.gguf"),
    }


def _load(settings: EngineSettings, **probe: bool) -> tuple[dict[str, float], dict[str, int]]:
    """Load, log what llama.cpp allocated, and (optionally) measure a checkpoint after a prefill."""
    from edgechat.engine import Engine, logged_buffers

    engine = Engine(settings)
    try:
        logged = logged_buffers()
        extra: dict[str, int] = {}
        if probe.get("checkpoint"):
            lc = engine._lc
            n = min(engine.n_ctx - 8, 1500)
            engine.eval([(i * 7) % 100 + 3 for i in range(n)])
            extra["checkpoint"] = int(
                lc.llama_state_seq_get_size_ext(engine.llm._ctx.ctx, 0, lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)
            )
        return logged, extra
    finally:
        engine.close()


# --- which kind, from the header ---------------------------------------------------------


def test_gguf_info_names_the_memory_kind(smollm2: Path, gemma: Path, tiny: dict[str, Path]) -> None:
    assert read_gguf(smollm2).memory_kind == "dense" and read_gguf(smollm2).n_swa == 0
    g = read_gguf(gemma)
    assert (g.memory_kind, g.n_swa) == ("swa", 512)
    q = read_gguf(tiny["qwen35"])
    assert q.memory_kind == "hybrid"
    assert q.attention_layers() == [False, True, False, True]  # full_attention_interval 2
    assert read_gguf(tiny["qwen35-i4"]).attention_layers() == [False, False, False, True]
    lfm = read_gguf(tiny["lfm2"])
    assert lfm.recurrent_layers() == [False, True, False, True]
    assert lfm.n_embd_r == 64 * 2 and lfm.n_embd_s == 0


# --- hybrids: KV only on attention layers, plus the RS buffer ----------------------------


@pytest.mark.parametrize("name", ["qwen35", "qwen35-i4", "lfm2"])
def test_hybrid_kv_and_recurrent_state_match_llama_cpp(tiny: dict[str, Path], name: str) -> None:
    settings = EngineSettings(model_path=str(tiny[name]), n_ctx=4096, threads=2)
    logged, measured = _load(settings, checkpoint=True)
    e = estimate_settings(settings, cpu_flags=FLAGS)
    assert logged["KV"] > 0 and e.rs > 0
    assert e.kv / MiB == pytest.approx(logged["KV"], rel=0.02)  # was 2x (4x at interval 4) for qwen35
    assert e.rs / MiB == pytest.approx(logged["RS"], abs=0.006)  # logged to 0.01 MiB
    assert e.buffers / MiB == pytest.approx(logged["total"], rel=0.10)
    # A checkpoint (PARTIAL_ONLY) of a hybrid is its recurrent state.
    assert e.memory_kind == "hybrid"
    assert e.checkpoint_bytes == pytest.approx(measured["checkpoint"], rel=0.02, abs=64)
    assert e.checkpoint_ram == 2 * e.checkpoint_bytes and e.total_cpu > e.buffers


# --- sliding window: cells with and without swa_full, checkpoint = the window -------------


@pytest.mark.parametrize(
    ("n_ctx", "swa_full"), [(8192, True), (8192, False), (32768, False)], ids=["8k-full", "8k", "32k"]
)
def test_gemma_sliding_window_cells_match_llama_cpp(gemma: Path, n_ctx: int, swa_full: bool) -> None:
    settings = EngineSettings(model_path=str(gemma), n_ctx=n_ctx, swa_full=swa_full, threads=2)
    logged, _ = _load(settings)
    e = estimate_settings(settings, cpu_flags=FLAGS)
    assert e.kv_cells_swa == (n_ctx if swa_full else 1024)  # GGML_PAD(min(n_ctx, 512 + 512), 256)
    assert e.kv / MiB == pytest.approx(logged["KV"], rel=0.02)
    assert e.weights / MiB == pytest.approx(logged["model"], rel=0.02)  # CPU_REPACK included


def test_gemma_checkpoint_is_the_window(gemma: Path) -> None:
    settings = EngineSettings(model_path=str(gemma), n_ctx=2048, swa_full=False, threads=2)
    _, measured = _load(settings, checkpoint=True)
    e = estimate_settings(settings, cpu_flags=FLAGS)
    # llama.cpp wrote 7,870,848 B here: 512 cells x 15 SWA layers x 1 KiB, plus cell metadata.
    assert e.checkpoint_bytes == pytest.approx(measured["checkpoint"], rel=0.01)


def test_dense_models_need_no_checkpoint(smollm2: Path) -> None:
    e = estimate_settings(EngineSettings(model_path=str(smollm2), n_ctx=2048), cpu_flags=frozenset())
    assert (e.memory_kind, e.checkpoint_bytes, e.checkpoints, e.rs) == ("dense", 0, 0, 0)


# --- CPU_REPACK -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_q4_0(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 requantized to Q4_0 (ftype 2), the type llama.cpp's CPU backend repacks."""
    import llama_cpp

    out = tmp_path_factory.mktemp("q4_0") / "smollm2-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 2
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(smollm2).encode(), str(out).encode(), params) == 0
    return out


@pytest.mark.skipif(not ({"avx2", "dotprod", "i8mm"} & FLAGS), reason="this CPU repacks nothing")
def test_repacked_q4_0_weights_are_counted(smollm2_q4_0: Path, smollm2: Path) -> None:
    settings = EngineSettings(model_path=str(smollm2_q4_0), n_ctx=2048, threads=2)
    logged, _ = _load(settings)
    e = estimate_settings(settings, cpu_flags=FLAGS)
    assert logged["model:CPU_REPACK"] > 40
    assert e.weights_repack / MiB == pytest.approx(logged["model:CPU_REPACK"], rel=0.02)
    assert e.weights / MiB == pytest.approx(logged["model"], rel=0.02)
    # The plan no longer says Q4_0 needs less memory than Q4_1.
    q41 = estimate_settings(EngineSettings(model_path=str(smollm2), n_ctx=2048), cpu_flags=FLAGS)
    assert e.total > q41.total
    p = plan(read_gguf(smollm2_q4_0), n_ctx=2048, snapshot=ROOMY.__class__(**{**ROOMY.__dict__, "cpu_flags": FLAGS}))
    assert any("CPU_REPACK" in r for r in p.reasons)


def test_no_repack_without_the_cpu_features(gemma: Path) -> None:
    e = estimate_settings(EngineSettings(model_path=str(gemma), n_ctx=1024), cpu_flags=frozenset())
    assert e.weights_repack == 0
    avx2 = estimate_settings(EngineSettings(model_path=str(gemma), n_ctx=1024), cpu_flags=frozenset({"avx2"}))
    assert 10 * MiB < avx2.weights_repack < 16 * MiB  # its Q4_K matrices (llama.cpp logs 12.7 MiB)


# --- choosing types ----------------------------------------------------------------------


def test_flash_attention_off_plans_an_f16_v_cache(smollm2: Path) -> None:
    info = read_gguf(smollm2)
    p = plan(info, flash_attn=False, snapshot=ROOMY)
    assert (p.type_k, p.type_v, p.flash_attn) == ("f16", "f16", False)
    # A budget that needs a smaller cache quantizes K only.
    f16 = plan(info, n_ctx=8192, flash_attn=False, snapshot=ROOMY)
    tight = plan(info, n_ctx=8192, flash_attn=False, snapshot=ROOMY, budget_bytes=f16.total - 40 * MiB)
    assert tight.type_v == "f16" and tight.type_k in ("q8_0", "q4_0") and tight.n_ctx == 8192
    with pytest.raises(ConfigError, match="flash attention"):
        plan(info, kv_type="q8_0", flash_attn=False, snapshot=ROOMY)


def test_k_type_alone_leaves_v_f16(smollm2: Path) -> None:
    p = plan(read_gguf(smollm2), type_k="q8_0", snapshot=ROOMY)
    assert (p.type_k, p.type_v, p.flash_attn) == ("q8_0", "f16", False)
    p = plan(read_gguf(smollm2), type_v="q8_0", snapshot=ROOMY)
    assert (p.type_k, p.type_v, p.flash_attn) == ("f16", "q8_0", True)


def test_gpu_layers_without_offload_is_a_compromise(smollm2: Path) -> None:
    p = plan(read_gguf(smollm2), gpu_layers=99, snapshot=ROOMY, gpu_offload=False)
    assert p.gpu_layers == 0
    assert any("--gpu-layers 99 ignored" in c for c in p.compromises)  # said at load, not only by `plan`


@pytest.mark.parametrize(("kw", "match"), [({"n_ctx": -5}, "--ctx -5"), ({"budget_bytes": -5 * MiB}, "--budget-mb -5")])
def test_negative_ctx_or_budget_is_refused(smollm2: Path, kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plan(read_gguf(smollm2), snapshot=ROOMY, **kw)


# --- what the user sees -------------------------------------------------------------------


def test_plan_and_models_info_show_the_kind_and_resume_cost(home: Path, gemma: Path, tiny: dict[str, Path]) -> None:
    r = run_cli("plan", "-m", str(gemma), "--ctx", "4096", "--no-swa-full", home=home)
    assert r.returncode == 0, r.stderr
    assert "swa (window 512 tokens)" in r.stdout and "checkpoints" in r.stdout
    r = run_cli("models", "info", str(tiny["qwen35"]), "--json", home=home)
    info = json.loads(r.stdout)
    assert info["memory_kind"] == "hybrid" and info["checkpoint_bytes"] >= info["recurrent_state_bytes"] > 0
    assert resume_cost(read_gguf(gemma))["checkpoint_bytes"] == pytest.approx(7_870_848, rel=0.001)


def test_plan_takes_flash_attn(home: Path, smollm2: Path) -> None:
    on = json.loads(
        run_cli("plan", "-m", str(smollm2), "--ctx", "8192", "--flash-attn", "on", "--json", home=home).stdout
    )
    off = json.loads(run_cli("plan", "-m", str(smollm2), "--ctx", "8192", "--json", home=home).stdout)
    assert on["flash_attn"] is True and off["flash_attn"] is False
    assert on["compute"] < off["compute"]  # no n_kv x n_ubatch x n_head score matrix


def test_logged_buffers_reads_output_and_rs_lines() -> None:
    from edgechat.engine import logged_buffers

    log = (
        "llama_model_loader: loaded meta data\n"
        "load_tensors:   CPU_Mapped model buffer size =    85.30 MiB\n"
        "load_tensors:   CPU_REPACK model buffer size =    56.95 MiB\n"
        "llama_context:        CPU  output buffer size =     0.19 MiB\n"
        "llama_kv_cache:        CPU KV buffer size =     4.00 MiB\n"
        "llama_memory_recurrent:        CPU RS buffer size =     0.13 MiB\n"
        "llama_context:        CPU compute buffer size =    10.00 MiB\n"
    )
    b = logged_buffers(log)
    assert b["output"] == 0.19 and b["RS"] == 0.13 and b["model:CPU_REPACK"] == 56.95
    assert b["total"] == pytest.approx(85.30 + 56.95 + 0.19 + 4.0 + 0.13 + 10.0)
