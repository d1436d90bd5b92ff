#!/usr/bin/env python3
"""The planner's prediction beside what llama.cpp reports allocating, per model and KV type.

Loads each model (the two test models by default) at each KV type with the settings the
planner would hand llama.cpp, reads the buffer sizes llama.cpp logs (weights with the
CPU_REPACK copy, KV cache, recurrent state, compute, output) and prints predicted / logged
for the KV cache, the RS buffer, the repacked weights and the sum of the buffers, plus the
RSS the process gained (which also holds what llama.cpp does not log). `--checkpoint`
also prefills some tokens and compares one context checkpoint (PARTIAL_ONLY state) with
the planner's figure; `--tiny` adds tiny random-weight qwen35 and lfm2 hybrids.

    .venv/bin/python scripts/bench_plan.py [--ctx 4096,32768] [--kv f16,q8_0,q4_0]
        [--swa-full on|off|both] [--flash-attn on|off|auto] [--tiny] [--checkpoint] [MODEL.gguf ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from fetch_test_models import TEST_MODELS, fetch  # noqa: E402

from edgechat.config import EngineSettings  # noqa: E402
from edgechat.engine import Engine, logged_buffers  # noqa: E402
from edgechat.gguf_info import read_gguf  # noqa: E402
from edgechat.memory import rss_now  # noqa: E402
from edgechat.planner import MiB, estimate_settings  # noqa: E402


def measure(
    model: Path, kv: str, n_ctx: int, swa_full: bool, flash_attn: bool | None, checkpoint: bool
) -> dict[str, object]:
    info = read_gguf(model)
    settings = EngineSettings(
        str(model), n_ctx=n_ctx, type_k=kv, type_v=kv, threads=2, swa_full=swa_full, flash_attn=flash_attn
    )
    predicted = estimate_settings(settings, info)
    gc.collect()
    before = rss_now()
    engine = Engine(settings, info)
    logged = logged_buffers()
    rss = rss_now() - before
    ckpt = None
    if checkpoint and predicted.checkpoint_bytes:
        lc = engine._lc
        engine.eval([(i * 7) % 100 + 3 for i in range(min(engine.n_ctx - 8, 1000))])
        ckpt = int(lc.llama_state_seq_get_size_ext(engine.llm._ctx.ctx, 0, lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY))
    engine.close()
    return {
        "model": info.name,
        "kind": predicted.memory_kind,
        "kv_type": kv,
        "n_ctx": predicted.n_ctx,
        "swa_full": swa_full,
        "flash_attn": predicted.flash_attn,
        "swa_cells": predicted.kv_cells_swa,
        "kv_predicted_mib": round(predicted.kv / MiB, 2),
        "kv_logged_mib": round(logged["KV"], 2),
        "kv_ratio": round(predicted.kv / MiB / logged["KV"], 4) if logged["KV"] else None,
        "rs_predicted_mib": round(predicted.rs / MiB, 3),
        "rs_logged_mib": round(logged["RS"], 2),
        "repack_predicted_mib": round(predicted.weights_repack / MiB, 2),
        "repack_logged_mib": round(logged.get("model:CPU_REPACK", 0.0), 2),
        "compute_predicted_mib": round(predicted.compute / MiB, 1),
        "compute_logged_mib": round(logged["compute"], 1),
        "buffers_predicted_mib": round(predicted.buffers / MiB, 1),
        "buffers_logged_mib": round(logged["total"], 1),
        "buffers_ratio": round(predicted.buffers / MiB / logged["total"], 4),
        "checkpoint_predicted_bytes": predicted.checkpoint_bytes,
        "checkpoint_measured_bytes": ckpt,
        "total_predicted_mib": round(predicted.total / MiB, 1),
        "rss_gained_mib": round(rss / MiB, 1),
    }


def _tiny_models() -> list[Path]:
    from tiny_models import write_lfm2, write_qwen35

    d = Path(tempfile.mkdtemp(prefix="edgechat-tiny-"))
    return [write_qwen35(d / "tiny-qwen35.gguf"), write_qwen35(d / "tiny-qwen35-i4.gguf", interval=4),
            write_lfm2(d / "tiny-lfm2.gguf")]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--ctx", default="4096", help="one or more, comma-separated")
    ap.add_argument("--kv", default="f16,q8_0,q4_0")
    ap.add_argument("--swa-full", default="on", choices=["on", "off", "both"])
    ap.add_argument("--flash-attn", default="auto", choices=["on", "off", "auto"])
    ap.add_argument("--tiny", action="store_true", help="add tiny qwen35 / lfm2 hybrids")
    ap.add_argument("--checkpoint", action="store_true", help="measure one context checkpoint too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = args.models or [fetch(name) for name in TEST_MODELS]
    if args.tiny:
        models += _tiny_models()
    swa = {"on": [True], "off": [False], "both": [True, False]}[args.swa_full]
    fa = {"on": True, "off": False, "auto": None}[args.flash_attn]
    rows = [
        measure(m, kv, int(ctx), full, fa, args.checkpoint)
        for m in models
        for ctx in args.ctx.split(",")
        for kv in args.kv.split(",")
        for full in (swa if read_gguf(m).n_swa else [True])
    ]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'model':20} {'kind':6} {'kv':5} {'n_ctx':>6} {'swa':>5} | {'KV plan':>8} {'llama':>8} | "
          f"{'RS plan':>7} {'llama':>6} | {'repack':>6} {'llama':>6} | {'compute':>7} {'llama':>7} | "
          f"{'buffers':>8} {'llama':>8} {'ratio':>6} | {'ckpt plan':>10} {'measured':>10} | {'RSS +':>7}")  # fmt: skip
    for r in rows:
        swa_col = str(r["swa_cells"]) if r["swa_cells"] else "-"
        print(
            f"{str(r['model'])[:20]:20} {r['kind']:6} {r['kv_type']:5} {r['n_ctx']:>6} {swa_col:>5} | "
            f"{r['kv_predicted_mib']:>8} {r['kv_logged_mib']:>8} | {r['rs_predicted_mib']:>7} "
            f"{r['rs_logged_mib']:>6} | {r['repack_predicted_mib']:>6} {r['repack_logged_mib']:>6} | "
            f"{r['compute_predicted_mib']:>7} {r['compute_logged_mib']:>7} | {r['buffers_predicted_mib']:>8} "
            f"{r['buffers_logged_mib']:>8} {r['buffers_ratio']:>6.3f} | {r['checkpoint_predicted_bytes']:>10} "
            f"{str(r['checkpoint_measured_bytes'] or '-'):>10} | {r['rss_gained_mib']:>7}"
        )


if __name__ == "__main__":
    main()
