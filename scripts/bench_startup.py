#!/usr/bin/env python3
"""Cold start and decode speed of `edgechat generate` beside a bare llama-cpp-python loop.

Both run as fresh processes on the same model, prompt, context, threads and KV types;
cold start is process start to the first streamed byte on stdout, decode tok/s comes from
each side's own token timing. One run, medians of --repeats, ratios edgechat / bare.

    .venv/bin/python scripts/bench_startup.py [-m MODEL] [--kv f16,q8_0,q4_0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

PROMPT = "Write a long story about a dragon who learns to sing."
MAX_TOKENS = 96
CTX = 2048

# The baseline: what a user of llama-cpp-python alone would write.
BARE = r"""
import json, sys, time
t0 = float(sys.argv[1])
from llama_cpp import Llama
kv = {"f16": 1, "q8_0": 8, "q4_0": 2}[sys.argv[3]]
llm = Llama(sys.argv[2], n_ctx=int(sys.argv[4]), n_threads=int(sys.argv[5]), type_k=kv, type_v=kv,
            flash_attn=sys.argv[3] != "f16", verbose=False, seed=0)
stamps = []
for chunk in llm.create_chat_completion([{"role": "user", "content": sys.argv[6]}], max_tokens=int(sys.argv[7]),
                                        temperature=0, stream=True):
    if chunk["choices"][0]["delta"].get("content"):
        if not stamps:
            sys.stdout.write("x"); sys.stdout.flush()
        stamps.append(time.perf_counter())
gaps = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"decode_tokens_per_s": len(gaps) / sum(gaps) if gaps else 0.0, "tokens": len(stamps)}), file=sys.stderr)
"""


def first_byte(cmd: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.read(1)
    t1 = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {err.decode()[-500:]}")
    return t1, out.decode(), err.decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--kv", default="f16,q8_0,q4_0")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from fetch_test_models import fetch

        args.model = str(fetch("smollm2-135m"))
    rows = []
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "EDGECHAT_HOME": home, "PYTHONUNBUFFERED": "1"}
        for kv in args.kv.split(","):
            ours_start, ours_tps, bare_start, bare_tps = [], [], [], []
            common = ["-m", args.model, "--ctx", str(CTX), "--kv-type", kv, "--threads", str(args.threads),
                      "--max-tokens", str(MAX_TOKENS), "--temperature", "0"]  # fmt: skip
            for _ in range(args.repeats):
                t, _, _ = first_byte([sys.executable, "-m", "edgechat", "generate", PROMPT, *common], env)
                ours_start.append(t)
                js = subprocess.run([sys.executable, "-m", "edgechat", "generate", PROMPT, *common, "--json"],
                                    capture_output=True, text=True, env=env, check=True)  # fmt: skip
                ours_tps.append(json.loads(js.stdout)["decode_tokens_per_s"])
                t, _, err = first_byte(
                    [sys.executable, "-c", BARE, str(time.time()), args.model, kv, str(CTX), str(args.threads), PROMPT,
                     str(MAX_TOKENS)], env,
                )  # fmt: skip
                bare_start.append(t)
                bare_tps.append(json.loads(err.strip().splitlines()[-1])["decode_tokens_per_s"])
            row = {
                "kv_type": kv,
                "edgechat_cold_start_s": statistics.median(ours_start),
                "bare_cold_start_s": statistics.median(bare_start),
                "edgechat_decode_tps": statistics.median(ours_tps),
                "bare_decode_tps": statistics.median(bare_tps),
            }
            row["cold_start_ratio"] = row["edgechat_cold_start_s"] / row["bare_cold_start_s"]
            row["decode_ratio"] = row["edgechat_decode_tps"] / row["bare_decode_tps"]
            rows.append(row)
            if not args.json:
                print(
                    f"{kv:5} cold start: edgechat {row['edgechat_cold_start_s']:.2f} s, bare {row['bare_cold_start_s']:.2f} s"
                    f" (x{row['cold_start_ratio']:.2f})   decode: edgechat {row['edgechat_decode_tps']:.1f} tok/s,"
                    f" bare {row['bare_decode_tps']:.1f} tok/s (x{row['decode_ratio']:.2f})",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
