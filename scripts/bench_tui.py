#!/usr/bin/env python3
"""What the Textual UI costs over the bare pipeline (issue: the UI should cost under 5 %).

Both sides run the same model, settings and sequence of turns: N+1 fresh conversations,
each sent the same prompt (greedy, fixed max tokens); the first is a warm-up.

- UI (this process): Textual's pilot drives the real app. Input-to-first-token runs from
  the Enter key reaching the message box to the first reply text landing in the log
  widget's Markdown (`MessageView.first_paint`); decode tok/s comes from the turn's stats.
- pipeline (a subprocess, as `edgechat send` runs it): `Conversation.stream()` on the main
  thread; first token is the time from the call to the first text piece. Its turns
  alternate with the UI's, so load from other processes hits both sides alike.
- `edgechat generate --json` (a new process per run, its decode_tokens_per_s), also
  interleaved: each run is a UI turn, a pipeline turn and a `generate`.
- For reference, `edgechat send -c ID --json` on the conversation the UI created (ttft_s;
  a new process, so its KV comes from the state file).

The pipeline runs in its own process on purpose: llama.cpp's CPU backend (OpenMP) slows
down by 15-20 % once more than one thread of a process has run it, so measuring both sides
in one process would charge the UI for the benchmark's own decoding.

    .venv/bin/python scripts/bench_tui.py [-m MODEL] [--runs 9] [--max-tokens 256] [--ctx 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def default_model() -> str:
    local = ROOT / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if local.exists():
        return str(local)
    sys.path.insert(0, str(ROOT / "scripts"))
    from fetch_test_models import fetch

    return str(fetch("smollm2-135m"))


def runtime(args: argparse.Namespace, home: Path) -> Any:
    from edgechat import Runtime

    return Runtime(model=args.model, home=home, ctx=args.ctx, threads=args.threads)


class Pipeline:
    """The pipeline side: a subprocess that runs one turn per request, so turns interleave with the UI's."""

    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        argv = ["-m", args.model, "--max-tokens", str(args.max_tokens), "--ctx", str(args.ctx),
                "--threads", str(args.threads), "--pipeline", str(home)]  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.read()["ready"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())

    def turn(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("turn\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def serve_pipeline(args: argparse.Namespace, home: Path) -> None:
    """`--pipeline HOME`: load once, then one fresh-conversation turn per line on stdin, on the main thread."""
    rt = runtime(args, home)
    rt.load()
    print(json.dumps({"ready": True}), flush=True)
    for _line in sys.stdin:
        conv = rt.new_conversation()
        t0 = time.perf_counter()
        stream = conv.stream(PROMPT, max_tokens=args.max_tokens, temperature=0)
        t_first = None
        for _piece in stream:
            if t_first is None:
                t_first = time.perf_counter() - t0
        assert stream.reply is not None
        st = stream.reply.stats
        print(json.dumps({"first_token_s": t_first, "tokens_per_s": st.decode_tokens_per_s}), flush=True)
    rt.close()


async def measure(args: argparse.Namespace, home: Path, pipeline: Pipeline) -> dict[str, Any]:
    """Alternate UI turns, pipeline turns and `generate` runs, so outside load hits all sides alike."""
    from textual import events

    from edgechat.tui.app import EdgechatApp

    rt = runtime(args, home)
    app = EdgechatApp(lambda notice: rt)
    ui_first: list[float] = []
    ui_rate: list[float] = []
    ui_busy: list[float] = []
    pipe_first: list[float] = []
    pipe_rate: list[float] = []
    gen_rate: list[float] = []
    conversation = ""
    async with app.run_test(size=(100, 30)) as pilot:
        while not app.chat.model_ready:
            await pilot.pause(0.05)
        for run in range(args.runs + 1):  # run 0 warms both sides up and is not counted
            await app.chat.action_new_conversation()
            app.chat.prompt.text = PROMPT
            await pilot.pause()
            done = app.chat.last_stats
            cpu0 = time.thread_time()
            t0 = time.perf_counter()
            app.chat.prompt.post_message(events.Key("enter", "\r"))  # the key the user presses, into the box
            while app.chat.turn is None or app.chat.turn.view.first_paint is None:
                assert time.perf_counter() - t0 < 120, "no reply"
                await asyncio.sleep(0.0005)
            paint = app.chat.turn.view.first_paint - t0
            conversation = app.chat.turn.conversation_id
            while app.chat.turn is not None or app.chat.last_stats is done:
                await asyncio.sleep(0.05)
            busy = (time.thread_time() - cpu0) / (time.perf_counter() - t0)  # the UI thread's share of a core
            assert app.chat.last_stats is not None
            rate = app.chat.last_stats.decode_tokens_per_s
            p = pipeline.turn()
            g = cli(args, home, "generate", PROMPT)["decode_tokens_per_s"]
            print(
                f"run {run}: UI first token on screen {paint * 1000:4.0f} ms, {rate:5.1f} tok/s, "
                f"UI thread busy {busy * 100:2.0f} % | "
                f"pipeline first token {p['first_token_s'] * 1000:4.0f} ms, {p['tokens_per_s']:5.1f} tok/s | "
                f"generate {g:5.1f} tok/s"
                f"{'  (warm-up)' if not run else ''}",
                flush=True,
            )
            if run:
                ui_first.append(paint)
                ui_rate.append(rate)
                ui_busy.append(busy)
                pipe_first.append(p["first_token_s"])
                pipe_rate.append(p["tokens_per_s"])
                gen_rate.append(g)
        await app.action_quit()
    rt.close()
    return {"ui_first": ui_first, "ui_rate": ui_rate, "ui_busy": ui_busy, "pipe_first": pipe_first, "pipe_rate": pipe_rate,
            "gen_rate": gen_rate, "conversation": conversation}  # fmt: skip


def cli(args: argparse.Namespace, home: Path, *argv: str) -> dict[str, Any]:
    env = {**os.environ, "EDGECHAT_HOME": str(home)}
    common = ["-m", args.model, "--ctx", str(args.ctx), "--threads", str(args.threads)]
    sampling = ["--temperature", "0", "--max-tokens", str(args.max_tokens), "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "edgechat", *argv, *common, *sampling],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cli-runs", type=int, default=3, help="runs of `edgechat send -c`")
    parser.add_argument("--pipeline", metavar="HOME", help=argparse.SUPPRESS)  # the subprocess side
    args = parser.parse_args()
    args.model = args.model or default_model()
    if args.pipeline:
        serve_pipeline(args, Path(args.pipeline))
        return

    from edgechat.config import resolve_paths, save_default

    home = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    pipe_home = Path(tempfile.mkdtemp(prefix="bench-pipe-"))
    for h in (home, pipe_home):
        save_default(resolve_paths(h), "temperature", 0.0)
        save_default(resolve_paths(h), "max_tokens", args.max_tokens)
    pipeline = Pipeline(args, pipe_home)
    try:
        res = asyncio.run(measure(args, home, pipeline))
    finally:
        pipeline.close()
    send = [cli(args, home, "send", "-c", res["conversation"], PROMPT) for _ in range(args.cli_runs)]

    med = statistics.median
    ui_first, pipe_first = med(res["ui_first"]), med(res["pipe_first"])
    ui_rate, pipe_rate = med(res["ui_rate"]), med(res["pipe_rate"])
    pair = med(u / p for u, p in zip(res["ui_rate"], res["pipe_rate"], strict=True))
    gen_pair = med(u / g for u, g in zip(res["ui_rate"], res["gen_rate"], strict=True))
    send_ttft = med(r["ttft_s"] for r in send)
    gen_rate = med(res["gen_rate"])
    print()
    print(f"{Path(args.model).name}, ctx {args.ctx}, {args.threads} threads, greedy, {args.max_tokens} max tokens; "
          f"medians of {args.runs} runs (UI, pipeline, generate) and {args.cli_runs} (send)")  # fmt: skip
    print(f"input → first token:  UI {ui_first * 1000:.0f} ms   pipeline {pipe_first * 1000:.0f} ms   "
          f"UI overhead {(ui_first - pipe_first) * 1000:+.0f} ms")  # fmt: skip
    print(f"   `edgechat send -c` ttft_s {send_ttft * 1000:.0f} ms (new process: KV restored from "
          f"{send[0]['restored_from']}, then prefill)")  # fmt: skip
    print(f"decode tok/s:         UI {ui_rate:.1f}   pipeline {pipe_rate:.1f}   `edgechat generate` {gen_rate:.1f}")
    print(f"UI thread busy during a turn: {med(res['ui_busy']) * 100:.1f} % of one core (bench polling included)")
    print(f"UI decode cost (median of run pairs): {(1 - pair) * 100:+.1f} % vs pipeline, "
          f"{(1 - gen_pair) * 100:+.1f} % vs generate")  # fmt: skip


if __name__ == "__main__":
    main()
