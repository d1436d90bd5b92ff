#!/usr/bin/env python3
"""Layers on a loopback llama.cpp RPC server against the same layers on the local CPU.

One run, in one process: starts the ggml-rpc-server that scripts/build_rpc_server.py built
(on 127.0.0.1, a free port, --server-threads threads), then alternates the two placements
--repeats times, each with a fresh engine: all layers local (--gpu-layers 0) and all
layers on the server (--rpc, --gpu-layers -1). Per run: prefill tok/s of a --prompt-tokens
prompt (over the time to the first token), decode tok/s of --gen-tokens greedy tokens,
then the state save (to a file) and restore times of that context, which over RPC move
the KV cache across the socket; with flash attention off and on (--flash-attn), because
without it the V cache is stored transposed and llama.cpp reads and writes it one row at a
time, one RPC round trip each. Prints medians and the RPC/local ratios (JSON with --json).

    .venv/bin/python scripts/bench_rpc.py [-m MODEL] [--prompt-tokens 512] [--gen-tokens 64] [--repeats 3]

Loopback isolates the RPC overhead (serialisation, one TCP round trip per graph, the KV
cache read back on save) from the network; a real link adds its latency and bandwidth.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from edgechat import Runtime  # noqa: E402
from edgechat.config import SamplingSettings  # noqa: E402
from edgechat.errors import EdgechatError  # noqa: E402
from edgechat.rpc import hello, resolve  # noqa: E402


def start_server(threads: int) -> tuple[subprocess.Popen[bytes], str]:
    from build_rpc_server import cached_binary

    binary = cached_binary()
    if binary is None:
        raise SystemExit("error: ggml-rpc-server is not built — run scripts/build_rpc_server.py first")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            hello(resolve(endpoint), timeout=2)
            return proc, endpoint
        except EdgechatError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def prompt_tokens(rt: Runtime, n: int) -> list[int]:
    text = (ROOT / "edgechat" / "data" / "sample_text.txt").read_text(encoding="utf-8")
    engine = rt.load()
    tokens = engine.tokenize(text)
    while len(tokens) < n:
        tokens += tokens[1:]
    return tokens[:n]


def one(model: str, home: Path, rpc: str | None, flash_attn: bool, args: argparse.Namespace) -> dict[str, float]:
    options = {"rpc": rpc, "gpu_layers": -1} if rpc else {"gpu_layers": 0}
    ctx = args.prompt_tokens + args.gen_tokens + 64
    with Runtime(
        model=model, home=home, ctx=ctx, threads=args.threads, kv_type="f16", flash_attn=flash_attn, **options
    ) as rt:
        engine = rt.load()
        tokens = prompt_tokens(rt, args.prompt_tokens)
        sampling = SamplingSettings(max_tokens=args.gen_tokens, temperature=0.0, repeat_penalty=1.0, loop_guard=False)
        gen = engine.generate(tokens, sampling)
        gen.run()
        st = gen.stats
        assert st is not None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.kv"
            held = engine.cached_tokens
            t0 = time.perf_counter()
            engine.save_state(path)
            save_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            engine.load_state(path, held)
            load_s = time.perf_counter() - t0
            size = path.stat().st_size
        # Prefill over the time to the first token: with RPC, llama_decode returns once the graph
        # is sent (RPC_CMD_GRAPH_COMPUTE is asynchronous) and the wait lands on the first sample.
        return {
            "prefill_tok_s": st.prefill_tokens / st.ttft_s,
            "decode_tok_s": st.decode_tokens_per_s,
            "state_save_ms": save_s * 1000,
            "state_restore_ms": load_s * 1000,
            "state_mib": size / 2**20,
            "gpu_layers": float(engine.settings.gpu_layers),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None, help="model (default: the SmolLM2-135M test model)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="client CPU threads")
    ap.add_argument("--server-threads", type=int, default=1, help="ggml-rpc-server CPU threads")
    ap.add_argument(
        "--flash-attn",
        default="off,on",
        help="off, on or both: without it llama.cpp stores V transposed and a state save reads it row by row",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from fetch_test_models import fetch

        args.model = str(fetch("smollm2-135m"))
    fa_modes = [{"on": True, "off": False}[x.strip()] for x in args.flash_attn.split(",")]
    proc, endpoint = start_server(args.server_threads)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.repeats):
                for fa in fa_modes:
                    for where in ("local", "rpc"):
                        mode = f"{where} fa={'on' if fa else 'off'}"
                        home = Path(tmp) / f"{where}-{fa}-{i}"
                        run = one(args.model, home, endpoint if where == "rpc" else None, fa, args)
                        runs.setdefault(mode, []).append(run)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    keys = ("prefill_tok_s", "decode_tok_s", "state_save_ms", "state_restore_ms", "state_mib")
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in keys} for mode, rs in runs.items()}
    ratio = {
        fa: {k: med[f"rpc fa={fa}"][k] / med[f"local fa={fa}"][k] for k in keys if med[f"local fa={fa}"][k]}
        for fa in ("on", "off")
        if f"rpc fa={fa}" in med
    }
    report = {
        "model": Path(args.model).name,
        "endpoint": endpoint,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "repeats": args.repeats,
        "threads": args.threads,
        "server_threads": args.server_threads,
        "median": med,
        "rpc_over_local": ratio,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{report['model']} · {args.prompt_tokens}-token prompt, {args.gen_tokens} generated · "
        f"{args.threads} client / {args.server_threads} server threads · median of {args.repeats}"
    )
    for fa, rel in ratio.items():
        print(f"\nflash attention {fa}{'':6}{'local':>10}{'rpc (loopback)':>16}{'rpc/local':>11}")
        for k in keys:
            local, remote = med[f"local fa={fa}"][k], med[f"rpc fa={fa}"][k]
            print(f"{k:27}{local:>10.1f}{remote:>16.1f}{rel.get(k, 0):>11.2f}")


if __name__ == "__main__":
    main()
