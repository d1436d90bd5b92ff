#!/usr/bin/env python3
"""Cold start and decode speed of `edgechat generate` and `send -c` beside bare llama-cpp-python scripts.

Both run as fresh processes on the same model, prompt, context, threads and KV types;
cold start is process start to the first streamed byte on stdout, decode tok/s comes from
each side's own token timing. One run, medians of --repeats, ratios edgechat / bare; the
paired cold-start ratio is the median of each round's own ratio (robust to a drifting host).

`send` resumes a saved one-turn conversation (a fresh copy of it each run, so every run
answers the same second message); its bare side loads the same llama.cpp state file with
`llama_state_seq_load_file` and lets llama-cpp-python reuse the restored prefix: bare + state load.

    .venv/bin/python scripts/bench_startup.py [-m MODEL] [--kv f16,q8_0,q4_0] [--repeats 5] [--modes generate,send]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
llm = Llama(sys.argv[2], n_ctx=int(sys.argv[4]), n_threads=int(sys.argv[5]), n_threads_batch=int(sys.argv[5]), type_k=kv, type_v=kv,
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


# The bare resume: load the model, restore the state file, continue the chat.
BARE_RESUME = r"""
import ctypes, json, os, sys, time
from llama_cpp import Llama
import llama_cpp
a = json.loads(sys.argv[1])
kv = {"f16": 1, "q8_0": 8, "q4_0": 2}[a["kv"]]
llm = Llama(a["model"], n_ctx=a["ctx"], n_threads=a["threads"], n_threads_batch=a["threads"], type_k=kv, type_v=kv, flash_attn=a["kv"] != "f16",
            verbose=False, seed=0)
cap = llm.n_ctx()
arr = (llama_cpp.llama_token * cap)()
n = ctypes.c_size_t(0)
if not llama_cpp.llama_state_seq_load_file(llm._ctx.ctx, os.fsencode(a["payload"]), 0, arr, cap, ctypes.byref(n)):
    raise SystemExit("state load failed")
tokens = list(arr[: n.value])
llm.input_ids[: len(tokens)] = tokens
llm.n_tokens = len(tokens)
stamps = []
for chunk in llm.create_chat_completion(a["messages"], max_tokens=a["max_tokens"], temperature=0, stream=True):
    if chunk["choices"][0]["delta"].get("content"):
        if not stamps:
            sys.stdout.write("x"); sys.stdout.flush()
        stamps.append(time.perf_counter())
gaps = [b - a for a, b in zip(stamps, stamps[1:])]
print(json.dumps({"decode_tokens_per_s": len(gaps) / sum(gaps) if gaps else 0.0, "tokens": len(stamps)}), file=sys.stderr)
"""
CPU: list[float] = []  # each first_byte() process's user+system CPU seconds (steadier than wall on a busy box)
FIRST, SECOND = "What is the capital of France?", "And what is the capital of Italy?"


def first_byte(cmd: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """Seconds from process start to its first byte on stdout; the process's CPU seconds go to CPU[-1]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.read(1)
    t1 = time.perf_counter() - t0
    out, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {err.decode()[-500:]}")
    return t1, out.decode(), err.decode()


def _row(kind: str, kv: str, ours_start, bare_start, ours_tps, bare_tps, ours_cpu, bare_cpu) -> dict:
    row = {
        "mode": kind,
        "kv_type": kv,
        "edgechat_cold_start_s": statistics.median(ours_start),
        "bare_cold_start_s": statistics.median(bare_start),
        "edgechat_decode_tps": statistics.median(ours_tps),
        "bare_decode_tps": statistics.median(bare_tps),
        "edgechat_cpu_s": statistics.median(ours_cpu),
        "bare_cpu_s": statistics.median(bare_cpu),
    }
    row["cpu_ratio"] = row["edgechat_cpu_s"] / row["bare_cpu_s"]
    row["cold_start_ratio"] = row["edgechat_cold_start_s"] / row["bare_cold_start_s"]
    # Each round runs both sides back to back: the median of the rounds' own ratios cancels the
    # host's speed drifting between rounds, which the ratio of the two medians does not.
    row["cold_start_paired_ratio"] = statistics.median(o / b for o, b in zip(ours_start, bare_start, strict=True))
    row["cold_start_ratios"] = [round(o / b, 3) for o, b in zip(ours_start, bare_start, strict=True)]
    row["decode_ratio"] = row["edgechat_decode_tps"] / row["bare_decode_tps"]
    return row


def bench_generate(args, kv: str, env: dict[str, str], threads_opt: list[str]) -> dict:
    ours_start, ours_tps, bare_start, bare_tps, ours_cpu, bare_cpu = [], [], [], [], [], []
    common = ["-m", args.model, "--ctx", str(CTX), "--kv-type", kv, *threads_opt,
              "--max-tokens", str(args.max_tokens), "--temperature", "0"]  # fmt: skip
    for _ in range(args.repeats):
        t, _, _ = first_byte([sys.executable, "-m", "edgechat", "generate", PROMPT, *common], env)
        ours_start.append(t)
        ours_cpu.append(CPU[-1])
        js = subprocess.run([sys.executable, "-m", "edgechat", "generate", PROMPT, *common, "--json"],
                            capture_output=True, text=True, env=env, check=True)  # fmt: skip
        ours_tps.append(json.loads(js.stdout)["decode_tokens_per_s"])
        t, _, err = first_byte(
            [sys.executable, "-c", BARE, str(time.time()), args.model, kv, str(CTX), str(args.threads), PROMPT,
             str(args.max_tokens)], env,
        )  # fmt: skip
        bare_start.append(t)
        bare_cpu.append(CPU[-1])
        bare_tps.append(json.loads(err.strip().splitlines()[-1])["decode_tokens_per_s"])
    return _row("generate", kv, ours_start, bare_start, ours_tps, bare_tps, ours_cpu, bare_cpu)


def saved_conversation(args, kv: str, env: dict[str, str], common: list[str], tmp: Path) -> tuple[Path, str, dict]:
    """A home holding one answered turn (copy it per run), its conversation id, and the bare
    resume script's arguments for the same second message and state file."""
    pristine = tmp / f"pristine-{kv}"
    setup = subprocess.run(
        [sys.executable, "-m", "edgechat", "send", FIRST, "--new", *common, "--max-tokens", "32", "--json"],
        capture_output=True, text=True, env={**env, "EDGECHAT_HOME": str(pristine)}, check=True,
    )  # fmt: skip
    first = json.loads(setup.stdout)
    cid = first["conversation_id"]
    header_path = next(pristine.rglob(f"{cid}.json"))
    payload = header_path.parent / json.loads(header_path.read_text())["payload"]
    bare_args = {
        "model": args.model, "kv": kv, "ctx": CTX, "threads": args.threads, "payload": str(payload),
        "max_tokens": args.max_tokens,
        "messages": [{"role": "user", "content": FIRST}, {"role": "assistant", "content": first["reply"]},
                     {"role": "user", "content": SECOND}],
    }  # fmt: skip
    return pristine, cid, bare_args


def bench_send(args, kv: str, env: dict[str, str], threads_opt: list[str], tmp: Path) -> dict:
    """`send -c ID` on a saved one-turn conversation against bare llama-cpp-python + state load."""
    common = ["-m", args.model, "--ctx", str(CTX), "--kv-type", kv, *threads_opt, "--temperature", "0"]
    pristine, cid, bare_args = saved_conversation(args, kv, env, common, tmp)
    ours_start, ours_tps, bare_start, bare_tps, ours_cpu, bare_cpu = [], [], [], [], [], []
    for i in range(args.repeats):
        home = tmp / f"run-{kv}-{i}"
        shutil.copytree(pristine, home)
        cmd = [sys.executable, "-m", "edgechat", "send", SECOND, "-c", cid, *common,
               "--max-tokens", str(args.max_tokens)]  # fmt: skip
        t, _, _ = first_byte(cmd, {**env, "EDGECHAT_HOME": str(home)})
        ours_start.append(t)
        ours_cpu.append(CPU[-1])
        shutil.rmtree(home)
        shutil.copytree(pristine, home)
        js = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env={**env, "EDGECHAT_HOME": str(home)},
                            check=True)  # fmt: skip
        data = json.loads(js.stdout)
        if data["restored_from"] != "state":
            raise SystemExit(f"send restored from {data['restored_from']}, not the state file: the bench is void")
        ours_tps.append(data["decode_tokens_per_s"])
        shutil.rmtree(home)
        t, _, err = first_byte([sys.executable, "-c", BARE_RESUME, json.dumps(bare_args)], env)
        bare_start.append(t)
        bare_cpu.append(CPU[-1])
        bare_tps.append(json.loads(err.strip().splitlines()[-1])["decode_tokens_per_s"])
    return _row("send -c", kv, ours_start, bare_start, ours_tps, bare_tps, ours_cpu, bare_cpu)


def _byte_compile(env: dict[str, str]) -> None:
    """Compile the edgechat the runs use to .pyc first, as an installed package has them: without
    them (a checkout run with PYTHONDONTWRITEBYTECODE=1) every edgechat process compiles ~10k
    lines at start, which a user's `generate` does not pay (llama-cpp-python's are compiled)."""
    where = subprocess.run(
        [sys.executable, "-c", "import edgechat; print(edgechat.__file__)"], capture_output=True, text=True, env=env
    ).stdout.strip()
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(where).parent)], env=env)
    if not where or done.returncode != 0:
        print(
            f"warning: could not byte-compile {where or 'edgechat'}: cold starts include compiling it", file=sys.stderr
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--kv", default="f16,q8_0,q4_0")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the bare scripts' thread count")
    ap.add_argument(
        "--edgechat-threads", default="same", help="'same' (pin edgechat to --threads) or 'auto' (its own choice)"
    )
    ap.add_argument("--modes", default="generate,send")
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from fetch_test_models import fetch

        args.model = str(fetch("smollm2-135m"))
    threads_opt = [] if args.edgechat_threads == "auto" else ["--threads", str(args.threads)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EDGECHAT_HOME": str(Path(tmp) / "home"), "PYTHONUNBUFFERED": "1"}
        _byte_compile(env)
        for kv in args.kv.split(","):
            for mode in args.modes.split(","):
                if mode == "generate":
                    row = bench_generate(args, kv, env, threads_opt)
                elif mode == "send":
                    row = bench_send(args, kv, env, threads_opt, Path(tmp))
                else:
                    raise SystemExit(f"unknown mode {mode!r}: use generate,send")
                rows.append(row)
                if not args.json:
                    print(
                        f"{row['mode']:8} {kv:5} cold start: edgechat {row['edgechat_cold_start_s']:.3f} s,"
                        f" bare {row['bare_cold_start_s']:.3f} s (x{row['cold_start_ratio']:.2f};"
                        f" paired x{row['cold_start_paired_ratio']:.2f})   decode: edgechat"
                        f" {row['edgechat_decode_tps']:.1f} tok/s, bare {row['bare_decode_tps']:.1f} tok/s"
                        f" (x{row['decode_ratio']:.2f})   CPU: edgechat {row['edgechat_cpu_s']:.3f} s,"
                        f" bare {row['bare_cpu_s']:.3f} s (x{row['cpu_ratio']:.2f})",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
