#!/usr/bin/env python3
"""A conversation under live memory pressure: the context shrinks and grows back, no turn is lost.

A 30-turn conversation runs in one Runtime while a balloon child process (scripts/balloon.py)
takes and gives back RAM in steps. The floor is set just under the RAM free at the start
(EDGECHAT_MEMORY_FLOOR_MB semantics, so the balloon stays small and the machine safe), the
hold-off before growing back is short. Each step reports the balloon's size, the lowest free
RAM seen against the floor, this process's peak RSS, the context and KV type after it, and the
re-plans made in it with their time. At the end: turns lost (stored messages missing or empty
replies; must be 0) and how many turns compaction moved out of the context (still stored).

    .venv/bin/python scripts/bench_pressure.py [-m MODEL] [--turns 30] [--ctx 8192] [--gap-mb 512] [--json]

Default model: the test SmolLM2-135M (scripts/fetch_test_models.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from balloon import Balloon  # noqa: E402

from edgechat import Runtime  # noqa: E402
from edgechat.memory import PeakRss, probe  # noqa: E402
from edgechat.pressure import DEFAULT_SETTLE_S, PressureOptions  # noqa: E402

MiB = 1 << 20
QUESTIONS = [
    "Name one thing bees need to make honey.", "Why do bees dance?", "What is a drone bee?",
    "How long does a worker bee live?", "What do bees do in winter?", "What is propolis?",
    "How many eggs can a queen lay?", "Why are bees important for farms?", "What eats bees?",
    "How do bees talk to each other?",
]  # fmt: skip


def schedule(turns: int, gap: int) -> list[int]:
    """Balloon size for each turn: rest, pressure, more pressure, released (grow back), pressure."""
    steps = [0, gap * 2, gap * 3, 0, gap * 2]
    per = max(1, turns // len(steps))
    return [steps[min(i // per, len(steps) - 1)] for i in range(turns)]


def _replan_row(turn: int, where: str, r: dict) -> dict:
    return {
        "turn": turn, "where": where, "direction": r["direction"], "ctx": f"{r['ctx_before']}->{r['ctx_after']}",
        "kv": f"{r['kv_before']}->{r['kv_after']}", "seconds": round(r["seconds"], 3), "restored": r["restored"],
        "free_mb": r["ram_free"] >> 20, "floor_mb": r["ram_floor"] >> 20,
    }  # fmt: skip


def recreate_vs_load(model: str, ctx: int, threads: int) -> dict:
    """What a re-plan costs next to a load: a new llama.cpp context on the loaded model, against
    loading the model; the model loader's log lines during the recreation (0: weights not read)."""
    from dataclasses import replace

    from edgechat.config import EngineSettings
    from edgechat.engine import Engine, llama_log, log_position
    from edgechat.memory import rss_now

    settings = EngineSettings(model_path=model, n_ctx=ctx, threads=threads)
    t = time.perf_counter()
    engine = Engine(settings)
    load_s = time.perf_counter() - t
    try:
        out: dict = {"load_s": round(load_s, 3), "rss_mb": rss_now() >> 20, "recreate": []}
        for n_ctx, kv in ((ctx // 4, "f16"), (ctx // 4, "q8_0"), (ctx, "f16")):
            marker = log_position()
            t = time.perf_counter()
            engine.recreate_context(replace(settings, n_ctx=n_ctx, type_k=kv, type_v=kv))
            seconds = time.perf_counter() - t
            log = llama_log(since=marker)
            out["recreate"].append(
                {"ctx": n_ctx, "kv": kv, "seconds": round(seconds, 3), "rss_mb": rss_now() >> 20,
                 "model_loader_lines": log.count("llama_model_loader")}
            )  # fmt: skip
        return out
    finally:
        engine.close()


def run(args: argparse.Namespace) -> dict:
    model = args.model
    if model is None:
        from fetch_test_models import fetch

        model = str(fetch("smollm2-135m"))
    cost = recreate_vs_load(model, args.ctx, args.threads)
    home = Path(args.home or tempfile.mkdtemp(prefix="bench-pressure-"))
    pressure = PressureOptions(hold_s=args.hold_s, margin_bytes=64 * MiB, settle_s=args.settle_s)
    notices: list[str] = []
    steps: list[dict] = []
    with Runtime(
        model=model, home=home, ctx=args.ctx, kv_type=args.kv_type, threads=args.threads,
        compaction=args.compaction, pressure=pressure, on_notice=notices.append,
    ) as rt, Balloon() as balloon:  # fmt: skip
        conv = rt.new_conversation()
        conv.send("Hello! Let us talk about bees.", max_tokens=args.max_tokens, temperature=0)
        rt.watch_memory()
        m = rt.memory
        assert m is not None
        # The floor sits --gap-mb under free RAM now (ram_floor - floor: the plan's not yet resident part).
        rt.pressure = PressureOptions(
            floor_bytes=m.ram_free - (m.ram_floor - m.floor) - args.gap_mb * MiB,
            hold_s=args.hold_s, margin_bytes=64 * MiB, settle_s=args.settle_s,
        )  # fmt: skip
        plan = schedule(args.turns, args.gap_mb * MiB)
        for i, size in enumerate(plan):
            if not steps or steps[-1]["balloon_mb"] != size >> 20:
                held = balloon.hold(size)
                steps.append(
                    {"step": len(steps), "balloon_mb": size >> 20, "held_mb": held >> 20, "turns": 0,
                     "free_min_mb": None, "floor_mb": None, "peak_rss_mb": 0, "replans": []}
                )  # fmt: skip
            step = steps[-1]
            with PeakRss() as peak:
                # The user reads and types: the UI's idle timer looks at memory meanwhile.
                idle_until = time.monotonic() + args.pause_s
                while True:
                    made = rt.watch_memory()
                    if made is not None:
                        step["replans"].append(_replan_row(i + 1, "idle", made.to_json()))
                    if time.monotonic() >= idle_until:
                        break
                    time.sleep(min(0.5, args.pause_s))
                stream = conv.stream(QUESTIONS[i % len(QUESTIONS)], max_tokens=args.max_tokens, temperature=0)
                stream.run()
            free = probe(gpus=False).ram_available
            step["turns"] += 1
            step["free_min_mb"] = min(step["free_min_mb"] or free >> 20, free >> 20, rt.memory.ram_free >> 20)
            step["floor_mb"] = rt.memory.ram_floor >> 20
            step["peak_rss_mb"] = max(step["peak_rss_mb"], peak.peak >> 20)
            step["ctx"], step["kv"] = rt.context_limit, rt.kv_type
            if stream.replan is not None:  # made by the turn itself (idle ones are listed above)
                step["replans"].append(_replan_row(i + 1, "turn", stream.replan.to_json()))
        balloon.hold(0)
        stored = [m for m in conv.messages() if m.kind == "message"]
        expected = 2 * (args.turns + 1)
        lost = expected - len(stored) + sum(1 for m in stored if m.role == "assistant" and not m.content)
        replans = [r for s in steps for r in s["replans"]]
        return {
            "model": Path(model).name, "turns": args.turns, "ctx_asked": args.ctx, "gap_mb": args.gap_mb,
            "steps": steps, "replans": len(replans),
            "replan_s_max": max((r["seconds"] for r in replans), default=0.0),
            "turns_lost": lost, "messages_stored": len(stored),
            "messages_compacted": sum(1 for m in stored if m.compacted), "notices": notices,
            "recreate_vs_load": cost,
        }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model")
    ap.add_argument("--home")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--kv-type", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compaction", default="summarize")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--gap-mb", type=int, default=256, help="the floor sits this far under free RAM at the start")
    ap.add_argument("--hold-s", type=float, default=3.0, help="hold-off before the context grows back")
    ap.add_argument(
        "--settle-s", type=float, default=DEFAULT_SETTLE_S, help="what a shrink gave back counts as free this long"
    )
    ap.add_argument("--pause-s", type=float, default=2.0, help="idle time before each turn (memory is watched)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    out = run(args)
    out["seconds"] = round(time.perf_counter() - t, 1)
    if args.json:
        print(json.dumps(out))
        return 0 if out["turns_lost"] == 0 else 1
    cost = out["recreate_vs_load"]
    print(f"{out['model']}: model load {cost['load_s'] * 1000:.0f} ms (RSS {cost['rss_mb']} MiB); context recreated:")
    for r in cost["recreate"]:
        print(
            f"  -> {r['ctx']} tokens {r['kv']}: {r['seconds'] * 1000:.0f} ms, RSS {r['rss_mb']} MiB, "
            f"model loader log lines {r['model_loader_lines']}"
        )
    print(f"{out['turns']} turns, --ctx {out['ctx_asked']}, floor {args.gap_mb} MiB under free RAM")
    print(
        f"{'step':>4} {'balloon':>8} {'turns':>5} {'free min':>9} {'floor':>7} {'peak RSS':>9} {'ctx':>6} {'kv':>5}  re-plans"
    )
    for s in out["steps"]:
        rp = (
            "; ".join(
                f"t{r['turn']} {r['where']} {r['ctx']} {r['kv']} {r['seconds'] * 1000:.0f} ms (free {r['free_mb']}/{r['floor_mb']})"
                for r in s["replans"]
            )
            or "-"
        )
        print(
            f"{s['step']:>4} {s['held_mb']:>5} MiB {s['turns']:>5} {s['free_min_mb']:>5} MiB {s['floor_mb']:>3} MiB"
            f" {s['peak_rss_mb']:>5} MiB {s['ctx']:>6} {s['kv']:>5}  {rp}"
        )
    print(
        f"re-plans {out['replans']} (slowest {out['replan_s_max'] * 1000:.0f} ms), turns lost {out['turns_lost']}, "
        f"{out['messages_compacted']} of {out['messages_stored']} messages compacted out of the context (all stored), "
        f"{out['seconds']} s"
    )
    return 0 if out["turns_lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
