#!/usr/bin/env python3
"""`edgechat serve` in one run: resume after a restart, HTTP overhead, decode speed (issue 13).

1. Resume vs re-prefill: a chat request carrying a ~2,000-token history goes to a fresh
   server process (nothing cached: the history is prefilled), the server is stopped with
   SIGTERM, a new one is started on the same home, and the same history plus the reply and
   one new message is sent again (restored from the state file). TTFT as the client sees
   it (request sent ▸ first content chunk) and as the server reports it (`edgechat.ttft_s`).
2. HTTP overhead: the same one-token completion of a cached prompt, in-process
   (`Runtime.generate`) and through the server (`POST /v1/completions`, keep-alive),
   alternating N times; the difference of the medians is what HTTP, JSON and the thread
   hop add per request.
3. Decode speed: a greedy 128-token reply streamed from the server (client-side tokens/s
   between the first and last chunk, and the server's own figure) against
   `edgechat generate --json` (its decode_tokens_per_s) on the same prompt; the two
   alternate --decode-repeats times and the medians are compared.

    .venv/bin/python scripts/bench_serve.py [-m MODEL] [--tokens 2000] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx2 as httpx  # noqa: E402  (the openai client's HTTP library)

from edgechat import Runtime  # noqa: E402

WORDS = ["river", "stone", "lantern", "harbour", "meadow", "copper", "violin", "orchard", "signal", "winter", "garden", "engine", "pepper", "island", "ladder", "mirror", "candle", "forest", "anchor", "tunnel"]  # fmt: skip
QUESTION = "Summarize that in one sentence."
DECODE_PROMPT = "Write a long story about a dragon who learns to bake bread. Use many details."
CACHED_PROMPT = "The quick brown fox jumps over the lazy dog. " * 8


def filler(i: int, n_words: int) -> str:
    return " ".join(f"{WORDS[(i * 7 + k * 3) % len(WORDS)]}{'' if k % 9 else ' ' + str(i + k)}" for k in range(n_words))


def history_of(rt: Runtime, tokens: int) -> list[dict[str, str]]:
    """Synthetic turns whose rendered chat holds about `tokens` tokens."""
    engine = rt.load()
    msgs: list[dict[str, str]] = []
    i = 0
    while len(engine.chat_tokens(msgs or [{"role": "user", "content": ""}])) < tokens:
        msgs += [{"role": "user", "content": filler(i, 40)}, {"role": "assistant", "content": filler(i + 1, 60)}]
        i += 2
    return msgs


class Server:
    """`python -m edgechat serve` on a free port, ready when its ready line appears."""

    def __init__(self, home: Path, args: list[str]) -> None:
        cmd = [sys.executable, "-m", "edgechat", "--home", str(home), "serve", "--port", "0", *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                if line.startswith("edgechat serving ") and not self.url:
                    self.url = line.rsplit(" on ", 1)[1].strip()
                    ready.set()
                elif not self.url:
                    sys.stderr.write(line)
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(300)
        if not self.url:
            raise SystemExit(f"the server did not start (rc {self.proc.poll()})")
        self.http = httpx.Client(base_url=self.url, timeout=600)

    def stop(self) -> int:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def stream_chat(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Stream one chat reply; client-side TTFT and decode rate, plus the server's `edgechat` object."""
    t0 = time.perf_counter()
    first = last = 0.0
    text: list[str] = []
    final: dict[str, Any] = {}
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True,
                     "stream_options": {"include_usage": True}}) as r:  # fmt: skip
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                text.append(chunk["choices"][0]["delta"]["content"])
            if "usage" in chunk:
                final = chunk
    n = final["usage"]["completion_tokens"]
    return {
        "text": "".join(text),
        "ttft_client_s": first - t0,
        "ttft_server_s": final["edgechat"]["ttft_s"],
        "restore_s": final["edgechat"].get("restore_s"),
        "restored_from": final["edgechat"]["restored_from"],
        "prefill_tokens": final["edgechat"]["prefill_tokens"],
        "prompt_tokens": final["usage"]["prompt_tokens"],
        "completion_tokens": n,
        "decode_client_tok_s": (n - 1) / (last - first) if n > 1 and last > first else 0.0,
        "decode_server_tok_s": final["edgechat"]["decode_tokens_per_s"],
        "conversation_id": final["edgechat"]["conversation_id"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="model (default: the SmolLM2 test model)")
    ap.add_argument("--tokens", type=int, default=2000, help="history length for the resume test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20, help="requests per side for the HTTP overhead")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--decode-repeats", type=int, default=3, help="alternating server / generate runs (medians)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.model is None:
        from fetch_test_models import fetch

        args.model = str(fetch("smollm2-135m"))
    ctx = ((args.tokens + 600) // 256 + 1) * 256
    engine_args = ["-m", args.model, "--ctx", str(ctx), "--threads", str(args.threads)]
    out: dict[str, Any] = {"model": Path(args.model).name, "ctx": ctx, "threads": args.threads,
                           "load_average_start": os.getloadavg()[0], "cpus": os.cpu_count()}  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "serve"
        # In-process side (kept open, idle while the server works): the history to send, and the
        # per-request cost without HTTP, measured alternately with the server's below.
        rt = Runtime(model=args.model, home=Path(tmp) / "inproc", ctx=ctx, threads=args.threads)
        history = history_of(rt, args.tokens)
        sampling = rt.sampling(max_tokens=1, temperature=0.0)
        rt.generate(CACHED_PROMPT, raw=True, sampling=sampling).run()  # warm: the prompt is cached

        def generate() -> dict[str, Any]:
            """`edgechat generate`, the decode baseline (its own process, as a user runs it)."""
            done = subprocess.run(
                [sys.executable, "-m", "edgechat", "--home", str(Path(tmp) / "gen"), "generate", DECODE_PROMPT,
                 "--json", "--temperature", "0", "--max-tokens", str(args.decode_tokens), *engine_args],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
            )  # fmt: skip
            return dict(json.loads(done.stdout))

        # Server 1: the history arrives cold (re-prefill), then overhead and decode.
        server = Server(home, engine_args)
        model_id = server.http.get("/v1/models").json()["data"][0]["id"]
        chat = {"model": model_id, "temperature": 0, "max_tokens": 8}
        messages = [*history, {"role": "user", "content": QUESTION}]
        cold = stream_chat(server.http, {**chat, "messages": messages})
        completion = {"model": chat["model"], "prompt": CACHED_PROMPT, "max_tokens": 1, "temperature": 0}
        server.http.post("/v1/completions", json=completion).raise_for_status()
        inproc, served = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            rt.generate(CACHED_PROMPT, raw=True, sampling=sampling).run()
            inproc.append(time.perf_counter() - t)
            t = time.perf_counter()
            server.http.post("/v1/completions", json=completion).raise_for_status()
            served.append(time.perf_counter() - t)
        rt.close()
        # Decode: server and `generate` alternate, so a change in the machine's load hits both sides.
        decodes, generated = [], []
        for _ in range(args.decode_repeats):
            decodes.append(stream_chat(server.http, {**chat, "max_tokens": args.decode_tokens,
                                                     "messages": [{"role": "user", "content": DECODE_PROMPT}]}))  # fmt: skip
            generated.append(generate())
        assert server.stop() == 0

        # Server 2, a new process on the same home: the follow-up resumes from the state file.
        follow_up = [*messages, {"role": "assistant", "content": cold.pop("text")},
                     {"role": "user", "content": "Now list three of the words."}]  # fmt: skip
        server = Server(home, engine_args)
        warm = stream_chat(server.http, {**chat, "messages": follow_up})
        warm.pop("text")
        assert server.stop() == 0

    out["load_average_end"] = os.getloadavg()[0]
    out["resume"] = {
        "history_tokens": cold["prompt_tokens"],
        "reprefill": cold,
        "resume": warm,
        "ttft_ratio_client": cold["ttft_client_s"] / warm["ttft_client_s"],
        "ttft_ratio_server": cold["ttft_server_s"] / warm["ttft_server_s"],
    }
    out["http_overhead"] = {
        "inprocess_median_ms": statistics.median(inproc) * 1000,
        "server_median_ms": statistics.median(served) * 1000,
        "overhead_ms": (statistics.median(served) - statistics.median(inproc)) * 1000,
        "repeats": args.repeats,
    }
    gen_tok_s = statistics.median(g["decode_tokens_per_s"] for g in generated)
    client_tok_s = statistics.median(d["decode_client_tok_s"] for d in decodes)
    engine_tok_s = statistics.median(d["decode_server_tok_s"] for d in decodes)
    out["decode"] = {
        "generate_tok_s": gen_tok_s,
        "generate_tokens": generated[0]["completion_tokens"],
        "server_client_tok_s": client_tok_s,
        "server_engine_tok_s": engine_tok_s,
        "server_tokens": decodes[0]["completion_tokens"],
        "ratio_client": client_tok_s / gen_tok_s,
        "ratio_engine": engine_tok_s / gen_tok_s,
        "repeats": args.decode_repeats,
        "runs_generate_tok_s": [g["decode_tokens_per_s"] for g in generated],
        "runs_server_client_tok_s": [d["decode_client_tok_s"] for d in decodes],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    r, h, d = out["resume"], out["http_overhead"], out["decode"]
    print(
        f"model {out['model']}, ctx {ctx}, {args.threads} threads; load average {out['load_average_start']:.1f} "
        f"▸ {out['load_average_end']:.1f} on {out['cpus']} CPUs"
    )
    print(
        f"resume after restart, {r['history_tokens']}-token history: re-prefill TTFT {r['reprefill']['ttft_client_s']:.2f} s "
        f"({r['reprefill']['prefill_tokens']} tokens prefilled, {r['reprefill']['restored_from']}) vs resume "
        f"{r['resume']['ttft_client_s']:.3f} s ({r['resume']['prefill_tokens']} prefilled, {r['resume']['restored_from']}, "
        f"restore {r['resume']['restore_s']:.3f} s): "
        f"{r['ttft_ratio_client']:.1f}x (server-side {r['ttft_ratio_server']:.1f}x)"
    )
    print(
        f"HTTP overhead per request: {h['overhead_ms']:.1f} ms (server {h['server_median_ms']:.1f} ms vs in-process "
        f"{h['inprocess_median_ms']:.1f} ms, medians of {h['repeats']})"
    )
    print(
        f"decode: server {d['server_client_tok_s']:.1f} tok/s at the client ({d['server_engine_tok_s']:.1f} in its engine) "
        f"vs generate {d['generate_tok_s']:.1f} tok/s: {d['ratio_client']:.2f}x ({d['ratio_engine']:.2f}x), "
        f"medians of {d['repeats']} alternating runs"
    )


if __name__ == "__main__":
    main()
