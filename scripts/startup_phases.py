#!/usr/bin/env python3
"""Where a `send -c` cold start goes, phase by phase, beside the bare llama-cpp-python resume.

The same saved one-turn conversation and bare script as scripts/bench_startup.py. An import
hook (a sitecustomize on PYTHONPATH) stamps, from the process's own start time in /proc:
typer and edgechat.session imported, the llama_cpp import, `Llama()`, and the first byte on
stdout. One run, rounds alternating both sides; medians in ms, and the first-byte ratio
(of the medians, and the median of each round's own). Linux only (/proc).

    .venv/bin/python scripts/startup_phases.py [-m MODEL] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_startup import BARE_RESUME, CTX, SECOND, _byte_compile, saved_conversation  # noqa: E402

# Stamps in ms since the process started (its start tick in /proc/self/stat), printed on
# stderr as one JSON line when the first byte reaches stdout.
HOOK = r"""
import importlib.abc, importlib.machinery, json, os, sys, time
def _started():
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    with open("/proc/self/stat") as f:
        tick = int(f.read().rsplit(")", 1)[1].split()[19])
    return time.perf_counter() - (up - tick / os.sysconf("SC_CLK_TCK"))
_T0 = _started()
_marks = {}
def _mark(name):
    _marks.setdefault(name, round((time.perf_counter() - _T0) * 1000, 1))
class _Hook(importlib.abc.MetaPathFinder):
    WATCH = ("typer", "edgechat.session", "llama_cpp", "llama_cpp.llama")
    def find_spec(self, name, path, target=None):
        if name not in self.WATCH:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        def exec_module(module, run=run, name=name):
            _mark(name + " start")
            run(module)
            _mark(name + " end")
            if name == "llama_cpp.llama":
                init = module.Llama.__init__
                def timed(self, *a, **k):
                    _mark("Llama start")
                    init(self, *a, **k)
                    _mark("Llama end")
                module.Llama.__init__ = timed
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _Hook())
class _Out:
    def __init__(self, out):
        self.out = out
    def write(self, text):
        if text and "first byte" not in _marks:
            _mark("first byte")
            sys.stderr.write("PHASES " + json.dumps(_marks) + "\n")
        return self.out.write(text)
    def __getattr__(self, name):
        return getattr(self.out, name)
sys.stdout = _Out(sys.stdout)
"""

# (label, from mark, to mark); "start" is the process start (0 ms).
PHASES = [
    ("until the llama_cpp import", "start", "llama_cpp start"),
    ("  typer import", "typer start", "typer end"),
    ("  edgechat.session import", "edgechat.session start", "edgechat.session end"),
    ("llama_cpp import", "llama_cpp start", "llama_cpp end"),
    ("Llama()", "Llama start", "Llama end"),
    ("Llama() to the first byte", "Llama end", "first byte"),
    ("first byte", "start", "first byte"),
]


def phases(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {done.stderr[-500:]}")
    line = next((x for x in done.stderr.splitlines() if x.startswith("PHASES ")), None)
    if line is None:
        raise SystemExit(f"{cmd[:4]} printed no phases: {done.stderr[-500:]}")
    return {"start": 0.0, **json.loads(line[len("PHASES ") :])}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=8)
    args = ap.parse_args()
    if not Path("/proc/self/stat").exists():
        raise SystemExit("startup_phases.py reads process start times from /proc: Linux only")
    if args.model is None:
        from fetch_test_models import fetch

        args.model = str(fetch("smollm2-135m"))
    kv = "f16"
    common = ["-m", args.model, "--ctx", str(CTX), "--kv-type", kv, "--threads", str(args.threads),
              "--temperature", "0"]  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {"edgechat": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        hook = Path(tmp) / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        env = {**os.environ, "EDGECHAT_HOME": str(Path(tmp) / "home"), "PYTHONUNBUFFERED": "1"}
        _byte_compile(env)
        pristine, cid, bare_args = saved_conversation(args, kv, env, common, Path(tmp))
        hooked = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))}
        ours = [sys.executable, "-m", "edgechat", "send", SECOND, "-c", cid, *common, "--max-tokens",
                str(args.max_tokens)]  # fmt: skip
        bare = [sys.executable, "-c", BARE_RESUME, json.dumps(bare_args)]
        for i in range(args.repeats):
            home = Path(tmp) / f"run-{i}"
            shutil.copytree(pristine, home)
            sides = [("edgechat", ours, {**hooked, "EDGECHAT_HOME": str(home)}), ("bare", bare, hooked)]
            for name, cmd, side_env in sides if i % 2 == 0 else sides[::-1]:
                runs[name].append(phases(cmd, side_env))
            shutil.rmtree(home)

    def median(side: str, a: str, b: str) -> float | None:
        spans = [r[b] - r[a] for r in runs[side] if a in r and b in r]
        return statistics.median(spans) if spans else None

    print(f"{Path(args.model).name} · send -c, {kv} KV, {args.threads} thread(s) · medians of {args.repeats}, ms")
    print(f"{'phase':30} {'edgechat':>9} {'bare':>9}")
    for label, a, b in PHASES:
        cells = [median(side, a, b) for side in ("edgechat", "bare")]
        print(f"{label:30} " + " ".join(f"{c:9.0f}" if c is not None else f"{'-':>9}" for c in cells))
    ours_first = [r["first byte"] for r in runs["edgechat"]]
    bare_first = [r["first byte"] for r in runs["bare"]]
    paired = statistics.median(o / b for o, b in zip(ours_first, bare_first, strict=True))
    print(
        f"first byte edgechat / bare: x{statistics.median(ours_first) / statistics.median(bare_first):.2f}"
        f" (paired x{paired:.2f})"
    )


if __name__ == "__main__":
    main()
