"""Hardening: the store under threads, private files, and bad input that must give one line.

Each test is a repro from the review (notes/review-defects.md) that failed before its fix.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from edgechat.compaction import choose_cut
from edgechat.errors import BudgetError
from edgechat.store import Message, NewMessage, Store

from .conftest import GREEDY, run_cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _one_line_error(r) -> str:  # noqa: ANN001 - CompletedProcess
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- the store under threads ----------------------------------------------------------------


def test_store_shared_by_threads_loses_nothing(tmp_path: Path) -> None:
    """One thread appends turns while another creates and renames: all of it must land."""
    store = Store(tmp_path / "c.db")
    cid = store.create_conversation("m", {}).id
    errors: list[BaseException] = []
    n = 150

    def writer() -> None:
        try:
            for i in range(n):
                store.append_turn(cid, [NewMessage("user", f"q{i}"), NewMessage("assistant", f"a{i}")])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def other() -> None:
        try:
            for i in range(n):
                new = store.create_conversation("m", {}).id
                store.rename(new, f"t{i}")
                store.conversations()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(store.messages(cid)) == 2 * n
    assert len(store.conversations()) == n + 1
    store.close()


def test_transaction_rolls_back_and_keeps_its_contract(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.db")
    cid = store.create_conversation("m", {}).id
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("UPDATE conversations SET title = 'x' WHERE id = ?", (cid,))
        raise RuntimeError
    assert store.conversation(cid).title == "New conversation"
    store.close()


# --- private files -------------------------------------------------------------------------


def test_a_new_home_and_its_files_are_private(runtime_factory, home: Path) -> None:
    old = os.umask(0o022)
    try:
        rt = runtime_factory()
        c = rt.new_conversation()
        c.send("hi", max_tokens=2, temperature=0)
    finally:
        os.umask(old)
    assert _mode(home) == 0o700
    for f in [home / "conversations.db", *home.glob("conversations.db-*"), *(home / "states").iterdir()]:
        assert _mode(f) & 0o077 == 0, f
    assert _mode(home / "locks" / f"{c.id}.lock") == 0o600


def test_delete_removes_the_lock_file(runtime_factory, home: Path) -> None:
    rt = runtime_factory()
    c = rt.new_conversation()
    c.send("hi", max_tokens=2, temperature=0)
    assert (home / "locks" / f"{c.id}.lock").exists()
    rt.delete_conversation(c.id)
    assert not (home / "locks" / f"{c.id}.lock").exists()


def test_new_conversation_after_a_model_switch_uses_the_runtimes_model(runtime_factory, smollm2, gemma) -> None:
    rt = runtime_factory()
    other = rt.new_conversation(model=str(gemma))
    other.send("hi", max_tokens=1, temperature=0)  # loads gemma for that conversation
    assert rt.new_conversation().record.model == str(smollm2)


# --- compaction: an oversized message is refused at once, with its true size ------------------


def _msgs(n: int) -> list[Message]:
    return [Message(i, "c", i, "user" if i % 2 == 0 else "assistant", "x", 10, 0.0) for i in range(n)]


def test_an_oversized_message_is_rejected_after_one_render() -> None:
    calls: list[int] = []

    def prompt_len(k: int) -> int:
        calls.append(k)
        return 5000 + 10 * (120 - k)  # the new message alone is 5,000 tokens

    with pytest.raises(BudgetError, match="needs 4840 tokens plus 256 for the reply and 160 for a summary"):
        choose_cut(_msgs(120), prompt_len, 256, 4096, message_len=lambda: 4840)
    assert len(calls) == 1  # was two renders per turn of history


def test_the_cut_is_found_by_bisection() -> None:
    calls: list[int] = []

    def prompt_len(k: int) -> int:
        calls.append(k)
        return 100 + 10 * (200 - k)

    k = choose_cut(_msgs(200), prompt_len, 100, 2048)
    assert prompt_len(k) + 100 <= int(2048 * 0.6) < prompt_len(k - 2) + 100
    assert len(calls) < 20


# --- one-line errors -----------------------------------------------------------------------


def test_generate_dash_reads_stdin(home: Path, smollm2: Path) -> None:
    r = run_cli("generate", "-", "-m", str(smollm2), "--max-tokens", "8", "--json", *GREEDY, home=home,
                input="What is the capital of France?")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_tokens"] > 5


def test_batch_lines_with_bad_fields_fail_alone(home: Path, smollm2: Path, tmp_path: Path) -> None:
    batch = tmp_path / "b.jsonl"
    batch.write_bytes(
        b'{"prompt": "hi", "max_tokens": "abc"}\n'
        b'{"prompt": "hi", "temperature": null}\n'
        b'{"prompt": "hi", "seed": 1.5}\n'
        b'{"prompt": ""}\n'
        b'{"prompt": "caf\xe9"}\n'
        b'{"prompt": "Say hi.", "max_tokens": 3}\n'
    )
    r = run_cli("generate", "--batch", str(batch), "-m", str(smollm2), *GREEDY, home=home)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 4, 5, 6]
    assert all("error" in o for o in out[:5])
    assert '"max_tokens"' in out[0]["error"] and "empty" in out[3]["error"] and "UTF-8" in out[4]["error"]
    assert out[5]["completion_tokens"] >= 1  # the batch went on


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("generate", "hi", "--ctx", "-5"), "--ctx -5"),
        (("generate", "hi", "--budget-mb", "-5"), "--budget-mb -5"),
        (("generate", "hi", "--gpu-layers", "abc"), "--gpu-layers 'abc'"),
        (("plan", "--gpu-layers", "abc"), "--gpu-layers 'abc'"),
        (("plan", "--ctx", "-5"), "--ctx -5"),
        (("generate", "caf\udce9"), "not valid UTF-8"),
    ],
)
def test_bad_options_and_input_are_one_line(home: Path, smollm2: Path, args: tuple[str, ...], needle: str) -> None:
    argv = [os.fsencode(a) if "\udce9" in a else a for a in args]
    r = run_cli(*argv, "-m", str(smollm2), home=home)  # type: ignore[arg-type]
    assert needle in _one_line_error(r)


def test_non_utf8_stdin_is_one_line(home: Path, smollm2: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "EDGECHAT_HOME": str(home)}
    for cmd in (["generate"], ["send", "--new", "-"]):
        r = subprocess.run([sys.executable, "-m", "edgechat", *cmd, "-m", str(smollm2)], input=b"caf\xe9",
                           capture_output=True, env=env, timeout=120)  # fmt: skip
        r.stderr = r.stderr.decode()  # type: ignore[assignment]
        assert "not valid UTF-8" in _one_line_error(r)


@pytest.mark.parametrize(
    ("line", "needle"),
    [('ctx = "abc"', "defaults.ctx"), ('max_tokens = "many"', "defaults.max_tokens"),
     ('temperature = "hot"', "defaults.temperature"), ("gpu_layers = 1.5", "defaults.gpu_layers")],
)  # fmt: skip
def test_config_values_of_the_wrong_type_are_one_line(home: Path, line: str, needle: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f"[defaults]\n{line}\n")
    r = run_cli("generate", "hi", home=home)
    assert needle in _one_line_error(r)


def test_export_to_a_missing_directory_is_one_line(runtime_factory, home: Path, tmp_path: Path) -> None:
    rt = runtime_factory()
    cid = rt.new_conversation().id
    rt.close()
    r = run_cli("conversations", "export", cid, "-o", str(tmp_path / "missing" / "x.md"), home=home)
    assert "cannot write" in _one_line_error(r)


def test_models_info_on_a_device_file(home: Path) -> None:
    r = run_cli("models", "info", "/dev/null", home=home)
    line = _one_line_error(r)
    assert "not a regular file" in line and "/dev/null" in line


def test_gpu_layers_on_a_cpu_build_is_said_at_load(home: Path, smollm2: Path) -> None:
    from edgechat.engine import supports_gpu_offload

    if supports_gpu_offload():
        pytest.skip("this llama.cpp build offloads")
    r = run_cli("generate", "hi", "-m", str(smollm2), "--gpu-layers", "99", "--max-tokens", "1", *GREEDY, home=home)
    assert r.returncode == 0, r.stderr
    assert "--gpu-layers 99 ignored" in r.stderr


def test_flash_attn_off_works_without_naming_a_kv_type(home: Path, smollm2: Path) -> None:
    """It failed with 'a q8_0 V cache needs flash attention': the planner tried quantized V types."""
    r = run_cli("generate", "hi", "-m", str(smollm2), "--flash-attn", "off", "--max-tokens", "2", "--json", *GREEDY,
                home=home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kv_type"] == "f16"
    r = run_cli("generate", "hi", "-m", str(smollm2), "--flash-attn", "off", "--k-type", "q8_0", "--max-tokens", "2",
                "--json", *GREEDY, home=home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kv_type"] == "q8_0/f16"
