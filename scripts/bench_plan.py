#!/usr/bin/env python3
"""The planner's prediction beside what llama.cpp reports allocating, per model and KV type.

Loads each model (the two test models by default) at each KV type with the settings the
planner would hand llama.cpp, reads the buffer sizes llama.cpp logs (weights, KV cache,
compute, output) and prints predicted / logged for the KV cache and for the sum of the
buffers, plus the RSS the process gained (which also holds what llama.cpp does not log).

    .venv/bin/python scripts/bench_plan.py [--ctx 4096] [--kv f16,q8_0,q4_0] [MODEL.gguf ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fetch_test_models import TEST_MODELS, fetch  # noqa: E402

from edgechat.config import EngineSettings  # noqa: E402
from edgechat.engine import Engine, logged_buffers  # noqa: E402
from edgechat.gguf_info import read_gguf  # noqa: E402
from edgechat.memory import rss_now  # noqa: E402
from edgechat.planner import MiB, estimate_settings  # noqa: E402


def measure(model: Path, kv: str, n_ctx: int) -> dict[str, object]:
    info = read_gguf(model)
    settings = EngineSettings(str(model), n_ctx=n_ctx, type_k=kv, type_v=kv, threads=2)
    predicted = estimate_settings(settings, info)
    gc.collect()
    before = rss_now()
    engine = Engine(settings, info)
    logged = logged_buffers()
    rss = rss_now() - before
    engine.close()
    return {
        "model": info.name,
        "kv_type": kv,
        "n_ctx": predicted.n_ctx,
        "kv_predicted_mib": round(predicted.kv / MiB, 2),
        "kv_logged_mib": round(logged["KV"], 2),
        "kv_ratio": round(predicted.kv / MiB / logged["KV"], 4),
        "buffers_predicted_mib": round(predicted.buffers / MiB, 1),
        "buffers_logged_mib": round(logged["total"], 1),
        "buffers_ratio": round(predicted.buffers / MiB / logged["total"], 4),
        "total_predicted_mib": round(predicted.total / MiB, 1),
        "rss_gained_mib": round(rss / MiB, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--kv", default="f16,q8_0,q4_0")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    models = args.models or [fetch(name) for name in TEST_MODELS]
    rows = [measure(m, kv, args.ctx) for m in models for kv in args.kv.split(",")]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'model':22} {'kv':5} {'n_ctx':>6} | {'KV plan':>9} {'llama.cpp':>9} {'ratio':>6} | "
          f"{'buffers plan':>12} {'llama.cpp':>9} {'ratio':>6} | {'total plan':>10} {'RSS gained':>10}")  # fmt: skip
    for r in rows:
        print(
            f"{str(r['model'])[:22]:22} {r['kv_type']:5} {r['n_ctx']:>6} | {r['kv_predicted_mib']:>9} "
            f"{r['kv_logged_mib']:>9} {r['kv_ratio']:>6.3f} | {r['buffers_predicted_mib']:>12} "
            f"{r['buffers_logged_mib']:>9} {r['buffers_ratio']:>6.3f} | {r['total_predicted_mib']:>10} "
            f"{r['rss_gained_mib']:>10}"
        )


if __name__ == "__main__":
    main()
