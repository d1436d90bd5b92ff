#!/usr/bin/env python3
"""Peak RSS against the memory budget over a long conversation, and what compaction costs.

Runs a scripted 30-turn conversation under --budget-mb with a small context so that it
compacts several times; samples this process's RSS every 10 ms throughout. Reports the
plan the runtime chose, peak RSS vs budget, and each compaction's time (median, max).

    .venv/bin/python scripts/bench_budget.py [-m MODEL] [--budget-mb 400] [--ctx 1024] [--turns 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from edgechat import Runtime  # noqa: E402
from edgechat.memory import PeakRss  # noqa: E402

TOPICS = [
    "apples",
    "rivers",
    "violins",
    "lighthouses",
    "volcanoes",
    "bicycles",
    "owls",
    "glaciers",
    "lanterns",
    "harbours",
    "comets",
    "orchards",
    "deserts",
    "bridges",
    "telescopes",
    "honeybees",
    "canals",
    "pianos",
    "tides",
    "maps",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--budget-mb", type=int, default=400)
    ap.add_argument("--ctx", type=int, default=1024, help="cap the context: small, so 30 turns compact often")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--compaction", default="summarize")
    ap.add_argument("--kv-type", default="f16")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from fetch_test_models import fetch

        args.model = str(fetch("smollm2-135m"))
    peak = PeakRss()
    with peak, tempfile.TemporaryDirectory() as home, Runtime(
        model=args.model, home=home, budget_mb=args.budget_mb, ctx=args.ctx, kv_type=args.kv_type,
        compaction=args.compaction,
    ) as rt:  # fmt: skip
        engine = rt.load()
        conv = rt.new_conversation()
        compactions, context = [], []
        for i in range(args.turns):
            topic = TOPICS[i % len(TOPICS)]
            r = conv.send(f"Tell me three facts about {topic}.", max_tokens=args.max_tokens, temperature=0)
            context.append(r.stats.context_tokens)
            if r.compaction is not None:
                compactions.append(r.compaction.seconds)
            assert r.stats.context_tokens <= r.stats.context_limit
        kept = len([m for m in conv.messages() if m.kind == "message"])
        result = {
            "model": rt.model_name,
            "budget_mb": args.budget_mb,
            "n_ctx": engine.n_ctx,
            "kv_type": args.kv_type,
            "plan_total_mb": rt.plan.total / 2**20,
            "turns": args.turns,
            "messages_in_transcript": kept,
            "max_context_tokens": max(context),
            "compactions": len(compactions),
            "compaction_median_s": statistics.median(compactions) if compactions else None,
            "compaction_max_s": max(compactions) if compactions else None,
            "policy": args.compaction,
        }
    result["rss_before_load_mb"] = peak.start / 2**20
    result["peak_rss_mb"] = peak.peak / 2**20
    result["peak_over_budget"] = result["peak_rss_mb"] / args.budget_mb
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24} {v:.3f}" if isinstance(v, float) else f"{k:24} {v}")


if __name__ == "__main__":
    main()
