"""The README's examples, run as a new user would: its Python block as written, its shell lines
against the default model (issue 19).

The default model (smollm2-135m) is the test model, placed where the registry keeps it under
a fresh EDGECHAT_HOME, so `Runtime(model="smollm2-135m")` and bare `edgechat` commands find it
without a download. Placeholders (ID, NAME, TITLE) are filled in; `bench` and `kv-eval` get
flags that shrink them to seconds (what they print is covered by test_bench/test_kv_eval).
The home's config.toml sets `threads = 1` (see test_sampling.THREADS), not the examples.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgechat.loop_guard import repeated_words

from .conftest import ROOT, run_cli

README = ROOT / "README.md"
# Lines that set up or test the project rather than use it.
NOT_RUN = ("python3 -m venv", "./scripts/test")
# Test-only flags that keep the slow measuring commands short.
QUICK = {"bench": ["--lengths", "64", "--kv-types", "f16", "--gen-tokens", "4"], "kv-eval": ["--tokens", "64"]}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def shell_lines() -> list[str]:
    lines = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()  # the trailing comment, not a '#' inside quotes
            if line and not line.startswith(NOT_RUN):
                lines.append(line)
    return lines


@pytest.fixture()
def readme_home(home: Path, smollm2: Path) -> Path:
    """A fresh home where the registry's default model is already 'downloaded'."""
    dest = home / "models" / smollm2.name
    dest.parent.mkdir(parents=True)
    os.symlink(smollm2, dest)
    (home / "config.toml").write_text("[defaults]\nthreads = 1\n", encoding="utf-8")
    return home


def test_the_readme_has_the_examples_this_test_runs() -> None:
    lines = shell_lines()
    assert blocks("python")[0].startswith("from edgechat import Runtime")
    assert any(line.startswith("edgechat generate") for line in lines)
    assert any("conversations list" in line for line in lines)
    assert all("|" not in line or line.startswith(("echo", "printf")) for line in lines), "one command per line"


def test_the_readme_python_block_runs_as_written(readme_home: Path) -> None:
    code = blocks("python")[0]  # the API example; the OpenAI-client one needs a running server
    env = {**os.environ, "EDGECHAT_HOME": str(readme_home)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=readme_home, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Paris" in out
    assert repeated_words(out) is None, out  # neither reply loops (the first one used to, issue 19)


def test_every_readme_shell_line_runs_on_the_default_model(readme_home: Path, tmp_path: Path) -> None:
    cid = ""
    outputs: dict[str, str] = {}
    for line in shell_lines():
        stdin = None
        if line.startswith(("echo ", "printf ")):
            feeder, _, rest = line.partition(" | ")
            if not rest:  # `printf ... > prompts.jsonl`: a file the next line reads
                subprocess.run(line, shell=True, check=True, cwd=readme_home)
                continue
            stdin = subprocess.run(feeder, shell=True, capture_output=True, text=True, check=True).stdout
            line = rest
        words = shlex.split(line.replace(" ID ", f" {cid} ").replace(" ID", f" {cid}"))
        words = [{"NAME": "smollm2-135m", "TITLE": "Renamed"}.get(w, w) for w in words]
        assert words[0] == "edgechat", line
        args = words[1:] + QUICK.get(words[1], []) + (["--yes"] if words[1:3] == ["conversations", "delete"] else [])
        if args[0] == "serve":  # runs until stopped: it must come up and stop cleanly
            _serve_until_ready(args, readme_home)
            continue
        r = run_cli(*args, home=readme_home, input=stdin, cwd=readme_home)
        assert r.returncode == 0, f"{line}\n{r.stderr}"
        assert "Traceback" not in r.stderr
        outputs[line] = r.stdout
        if args[:2] == ["send", "--new"]:
            cid = r.stderr.split("[", 1)[1].split(" ", 1)[0]
        if args[0] in ("generate", "send"):
            assert r.stdout.strip(), line
            assert repeated_words(r.stdout) is None, f"{line} loops:\n{r.stdout}"
    haiku = next(v for k, v in outputs.items() if "haiku" in k)
    assert 2 <= len([x for x in haiku.splitlines() if x.strip()]) <= 12
    ada = next(v for k, v in outputs.items() if "What is my name" in k)
    assert '"restored_from": "state"' in ada  # (a 135M model may still not remember the name)


def _serve_until_ready(args: list[str], home: Path) -> None:
    """Start `edgechat serve` on a free port, wait for its ready line, then SIGTERM it (exit 0)."""
    env = {**os.environ, "EDGECHAT_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgechat", *args, "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=home,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("edgechat serving"):
                break
        assert seen and seen[-1].startswith("edgechat serving"), "".join(seen)
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_readme_prompts_do_not_loop_greedy(readme_home: Path) -> None:
    """Greedy replies of the default model to the README's prompts hold no 4+ word span 3 times in a row."""
    prompts = ["Write a haiku about rain", "What is the capital of France?", "My name is Ada."]
    for prompt in prompts:
        r = run_cli("generate", prompt, "--temperature", "0", "--json", home=readme_home)
        assert r.returncode == 0, r.stderr
        assert repeated_words(r.stdout) is None, f"{prompt!r} loops: {r.stdout}"
