"""Faults with real processes: a second writer, Ctrl-C and kill mid-reply, a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import GREEDY, run_cli

LONG = "Write a very long story about a lighthouse keeper, with many chapters."


def _send_json(home: Path, model: Path, *args: str, env: dict | None = None) -> dict:
    p = run_cli(
        "send", *args, "-m", str(model), "--ctx", "1024", "--max-tokens", "24", "--json", *GREEDY, home=home, env=env
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _messages(home: Path, cid: str) -> list[dict]:
    p = run_cli("conversations", "show", cid, "--json", home=home)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["messages"]


def _start_long_send(home: Path, model: Path, cid: str) -> subprocess.Popen:
    env = {**os.environ, "EDGECHAT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "edgechat", "send", LONG, "-c", cid, "-m", str(model), "--ctx", "1024",
         "--max-tokens", "600", *GREEDY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip


def _wait_for_output(proc: subprocess.Popen, chars: int = 20, timeout: float = 60) -> str:
    out = ""
    deadline = time.monotonic() + timeout
    while len(out) < chars and time.monotonic() < deadline:
        ch = proc.stdout.read(1)
        if not ch:
            break
        out += ch
    return out


def test_second_process_on_a_busy_conversation_fails_clearly(home, smollm2):
    cid = _send_json(home, smollm2, "Hello.", "--new")["conversation_id"]
    first = _start_long_send(home, smollm2, cid)
    try:
        assert _wait_for_output(first)
        p = run_cli(
            "send", "Me too.", "-c", cid, "-m", str(smollm2), *GREEDY, home=home, env={"EDGECHAT_LOCK_TIMEOUT": "0.5"}
        )
        assert p.returncode == 1
        assert f"waiting for pid {first.pid}" in p.stderr
        assert "busy in another edgechat process" in p.stderr
        assert "Traceback" not in p.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # no need to wait for 600 tokens: the reply is kept (partial)
        first.wait(timeout=300)
    assert first.returncode == 143
    roles = [m["role"] for m in _messages(home, cid)]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_ctrl_c_mid_reply_keeps_the_partial_reply_marked(home, smollm2):
    cid = _send_json(home, smollm2, "Hello.", "--new")["conversation_id"]
    proc = _start_long_send(home, smollm2, cid)
    assert _wait_for_output(proc, 30)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    msgs = _messages(home, cid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[-1]["partial"] is True and msgs[-1]["content"]
    # The conversation goes on, from its saved state.
    nxt = _send_json(home, smollm2, "Thanks.", "-c", cid)
    assert nxt["restored_from"] == "state"


def test_kill_mid_reply_keeps_the_message_and_the_reply_so_far(home, smollm2):
    cid = _send_json(home, smollm2, "Hello.", "--new")["conversation_id"]
    header_before = (home / "states" / f"{cid}.json").read_text()
    proc = _start_long_send(home, smollm2, cid)
    assert _wait_for_output(proc, 30)
    time.sleep(0.6)  # past one timed write of the streaming reply
    proc.kill()
    proc.wait(timeout=60)
    msgs = _messages(home, cid)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == LONG
    assert msgs[3]["partial"] and msgs[3]["reason"] == "interrupted" and msgs[3]["content"]
    assert (home / "states" / f"{cid}.json").read_text() == header_before
    # The next turn follows the partial reply, from the last saved state plus a prefill.
    nxt = _send_json(home, smollm2, "Are you there?", "-c", cid)
    assert nxt["restored_from"] == "state"
    assert len(_messages(home, cid)) == 6


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_state_save_keeps_old_state_and_transcript(home, smollm2):
    cid = _send_json(home, smollm2, "Hello.", "--new")["conversation_id"]
    header_before = json.loads((home / "states" / f"{cid}.json").read_text())
    payload_size = header_before["payload_size"]
    env = {**os.environ, "EDGECHAT_HOME": str(home)}
    p = subprocess.run(
        [sys.executable, "-m", "edgechat", "send", "Tell me more about yourself.", "-c", cid, "-m", str(smollm2),
         "--ctx", "1024", "--max-tokens", "24", "--json", *GREEDY],
        capture_output=True, text=True, env=env, timeout=300, preexec_fn=_limit_file_size(payload_size - 1),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "could not save the KV state" in p.stderr and "transcript is safe" in p.stderr
    assert json.loads((home / "states" / f"{cid}.json").read_text()) == header_before
    assert not list((home / "states").glob("*.tmp"))
    assert len(_messages(home, cid)) == 4
    # The old state is still a valid prefix of the longer conversation.
    nxt = _send_json(home, smollm2, "Thanks.", "-c", cid)
    assert nxt["restored_from"] == "state"
    assert len(_messages(home, cid)) == 6
