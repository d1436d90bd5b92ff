#!/usr/bin/env python3
"""Decode and prefill speed under other load: the automatic thread choice against every fixed count.

For each condition (0 busy processes, 1, one per core) it starts that many spinning
processes, then runs the same greedy generation (fixed prompt, fixed length, from an empty
cache) with the automatic choice and with each fixed thread count 1..cores, interleaved
and rotated over --repeats rounds so drifting background load hits every setting alike.
It prints medians of decode tok/s, prefill tok/s, TTFT and p95 per-token latency, each
also as a ratio against the best fixed count in that condition (1.00 = as good as the
best; higher is better for every ratio), and auto against all cores.

    .venv/bin/python scripts/bench_load.py                  # about 1-2 minutes on 2 cores
    .venv/bin/python scripts/bench_load.py --repeats 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps as his "
    "father had taught him, and at the top he wound the clockwork that turned the great lens. "
)
SPIN = "while True:\n    pass\n"


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(0.95 * (len(s) - 1) + 0.5))]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else 1.0


def busy(n: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    time.sleep(0.5 if n else 0.0)  # let them reach the run queue before measuring
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def one_run(eng, tokens: list[int], max_tokens: int, threads: int | None, limit_s: float) -> dict[str, float]:
    """One generation from an empty cache; decode stops after `limit_s` (a stalled setting can crawl)."""
    import threading

    from edgechat.config import SamplingSettings
    from edgechat.errors import Cancelled

    eng.threads.pin(threads)
    eng.clear()
    stop = threading.Event()
    timer = threading.Timer(limit_s, stop.set)
    timer.start()
    try:
        gen = eng.generate(tokens, SamplingSettings(max_tokens=max_tokens, temperature=0.0, seed=0), stop=stop)
        gen.run()
    except Cancelled:  # not even the first token within the limit: counts as 0 tok/s, TTFT >= limit
        pass
    finally:
        timer.cancel()
    st = gen.stats
    if st is None:  # stopped inside prefill
        return {
            "decode_tps": 0.0,
            "prefill_tps": 0.0,
            "ttft_s": limit_s,
            "p95_ms": limit_s * 1000,
            "decode_threads": eng.llm.n_threads,
            "prefill_threads": eng.llm.n_threads_batch,
            "thread_changes": 0,
        }
    return {
        "decode_tps": st.decode_tokens_per_s,
        "prefill_tps": st.prefill_tokens / st.prefill_s if st.prefill_s else 0.0,
        "ttft_s": st.ttft_s,
        "p95_ms": p95(list(st.token_latencies_s)) * 1000 if st.token_latencies_s else limit_s * 1000,
        "decode_threads": st.decode_threads,
        "prefill_threads": st.prefill_threads,
        "thread_changes": st.thread_changes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF path (default: the SmolLM2-135M test model)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens to decode per run")
    ap.add_argument("--prompt-tokens", type=int, default=192, help="prompt length (prefill) per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loads", default=None, help="busy-process counts, e.g. 0,1,2 (default: 0, 1, one per core)")
    ap.add_argument("--limit-s", type=float, default=15.0, help="cut a run's decode after this long")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from fetch_test_models import fetch

        args.model = str(fetch("smollm2-135m"))

    import psutil

    from edgechat.config import EngineSettings
    from edgechat.engine import Engine

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    loads = [int(x) for x in args.loads.split(",")] if args.loads else sorted({0, 1, cores})
    settings_list: list[int | None] = [None, *range(1, cores + 1)]  # None: automatic
    eng = Engine(EngineSettings(model_path=args.model, n_ctx=1024, seed=0))
    tokens = eng.tokenize(TEXT * 20)[: args.prompt_tokens]
    one_run(eng, tokens[:32], 4, None, args.limit_s)  # warm-up: page faults, first thread start
    t_start = time.perf_counter()
    rows = []
    try:
        for n_busy in loads:
            procs = busy(n_busy)
            try:
                runs: dict[str, list[dict[str, float]]] = {}
                for r in range(args.repeats):
                    k = r % len(settings_list)
                    for threads in settings_list[k:] + settings_list[:k]:
                        key = "auto" if threads is None else str(threads)
                        run = one_run(eng, tokens, args.tokens, threads, args.limit_s)
                        runs.setdefault(key, []).append(run)
                        print(
                            f"  busy {n_busy}, threads {key}: decode {run['decode_tps']:.1f} tok/s,"
                            f" TTFT {run['ttft_s']:.2f} s (chose {run['decode_threads']}/{run['prefill_threads']})",
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                stop(procs)
            med = {key: {m: statistics.median(x[m] for x in rs) for m in rs[0]} for key, rs in runs.items()}
            fixed = [str(t) for t in range(1, cores + 1)]
            best = {
                "decode_tps": max(med[f]["decode_tps"] for f in fixed),
                "prefill_tps": max(med[f]["prefill_tps"] for f in fixed),
                "ttft_s": min(med[f]["ttft_s"] for f in fixed),
                "p95_ms": min(med[f]["p95_ms"] for f in fixed),
            }
            for key, m in med.items():
                rows.append({
                    "busy_processes": n_busy, "threads": key, **m,
                    "decode_vs_best": ratio(m["decode_tps"], best["decode_tps"]),
                    "prefill_vs_best": ratio(m["prefill_tps"], best["prefill_tps"]),
                    "ttft_vs_best": ratio(best["ttft_s"], m["ttft_s"]),
                    "p95_vs_best": ratio(best["p95_ms"], m["p95_ms"]),
                    "decode_vs_all_cores": ratio(m["decode_tps"], med[str(cores)]["decode_tps"]),
                    "prefill_vs_all_cores": ratio(m["prefill_tps"], med[str(cores)]["prefill_tps"]),
                })  # fmt: skip
    finally:
        eng.close()
    wall = time.perf_counter() - t_start
    if args.json:
        print(
            json.dumps({"cores": cores, "repeats": args.repeats, "tokens": args.tokens, "wall_s": wall, "rows": rows})
        )
        return
    print(
        f"{Path(args.model).name} · {cores} cores · {args.prompt_tokens}-token prompt, {args.tokens} decoded tokens · "
        f"medians of {args.repeats} · ratios: 1.00 = the best fixed count in that condition, higher is better"
    )
    head = (
        f"{'busy':>4} {'threads':>7} {'decode t/s':>10} {'x best':>6} {'x all':>6} {'prefill t/s':>11} {'x best':>6}"
        f" {'x all':>6} {'TTFT s':>7} {'x best':>6} {'p95 ms':>7} {'x best':>6}  chosen (decode/prefill)"
    )
    print(head)
    for row in rows:
        chosen = f"{row['decode_threads']:.0f}/{row['prefill_threads']:.0f}" if row["threads"] == "auto" else ""
        print(
            f"{row['busy_processes']:>4} {row['threads']:>7} {row['decode_tps']:>10.1f} {row['decode_vs_best']:>6.2f}"
            f" {row['decode_vs_all_cores']:>6.2f} {row['prefill_tps']:>11.1f} {row['prefill_vs_best']:>6.2f}"
            f" {row['prefill_vs_all_cores']:>6.2f} {row['ttft_s']:>7.3f} {row['ttft_vs_best']:>6.2f}"
            f" {row['p95_ms']:>7.1f} {row['p95_vs_best']:>6.2f}  {chosen}"
        )
    print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
