"""Conversations persist and resume from their saved KV state, in new processes too."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgechat import Runtime
from edgechat.state import StateFiles

from .conftest import GREEDY, run_cli

TURNS = [
    "My name is Ada and I keep bees. Say hello.",
    "What do I keep?",
    "Give my bees a name.",
]


def _send(home: Path, model: Path, text: str, *target: str, extra: tuple[str, ...] = ()) -> dict:
    p = run_cli(
        "send",
        text,
        *target,
        "-m",
        str(model),
        "--ctx",
        "1024",
        "--max-tokens",
        "32",
        "--json",
        *GREEDY,
        *extra,
        home=home,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout) | {"_stderr": p.stderr}


def test_restored_turn_is_token_identical(tmp_path, smollm2, runtime_factory):
    # Uninterrupted: all turns in one process with the live cache.
    rt = runtime_factory(home=tmp_path / "live")
    conv = rt.new_conversation()
    live = [conv.send(t, max_tokens=32, temperature=0) for t in TURNS]
    assert [r.stats.restored_from for r in live] == ["new", "memory", "memory"]

    # Interrupted: every turn in a new process, resumed from the state file.
    home = tmp_path / "resumed"
    first = _send(home, smollm2, TURNS[0], "--new")
    cid = first["conversation_id"]
    resumed = [first] + [_send(home, smollm2, t, "-c", cid) for t in TURNS[1:]]
    assert [r["restored_from"] for r in resumed] == ["new", "state", "state"]
    assert [r["reply"] for r in resumed] == [r.text for r in live]
    # Turn k prefills the new message, not the history.
    for r_live, r_res in zip(live[1:], resumed[1:], strict=True):
        assert r_res["prefill_tokens"] == r_live.stats.prefill_tokens
        assert r_res["prefill_tokens"] < r_res["context_tokens"] / 2


def test_send_json_has_the_contract_fields(home, smollm2):
    data = _send(home, smollm2, "Hello!", "--new")
    for key in (
        "conversation_id", "reply", "restored_from", "prefill_tokens", "completion_tokens", "context_tokens",
        "context_limit", "compacted", "ttft_s", "decode_tokens_per_s", "kv_type",
    ):  # fmt: skip
        assert key in data
    assert data["context_limit"] == 1024
    assert data["compacted"] is False


def test_continue_picks_the_latest_conversation(home, smollm2):
    a = _send(home, smollm2, "First conversation.", "--new")
    b = _send(home, smollm2, "Second conversation.", "--new")
    c = _send(home, smollm2, "Which one is this?", "--continue")
    assert c["conversation_id"] == b["conversation_id"] != a["conversation_id"]


def _corrupt_payload(states: Path, cid: str) -> None:
    header = json.loads((states / f"{cid}.json").read_text())
    payload = states / header["payload"]
    data = bytearray(payload.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    payload.write_bytes(bytes(data))


def _truncate_payload(states: Path, cid: str) -> None:
    header = json.loads((states / f"{cid}.json").read_text())
    payload = states / header["payload"]
    payload.write_bytes(payload.read_bytes()[:1000])


def _damage_header(states: Path, cid: str) -> None:
    (states / f"{cid}.json").write_text("{ not json")


@pytest.mark.parametrize(
    "damage", [_corrupt_payload, _truncate_payload, _damage_header], ids=["corrupt", "truncated", "header"]
)
def test_damaged_state_falls_back_to_the_transcript(home, smollm2, damage):
    first = _send(home, smollm2, TURNS[0], "--new")
    cid = first["conversation_id"]
    damage(home / "states", cid)
    second = _send(home, smollm2, TURNS[1], "-c", cid)
    assert second["restored_from"] == "transcript"
    assert second["_stderr"].count("note:") == 1 and "rebuilding" in second["_stderr"]
    # The bad file was replaced: the next turn resumes from state again.
    third = _send(home, smollm2, TURNS[2], "-c", cid)
    assert third["restored_from"] == "state"
    show = json.loads(run_cli("conversations", "show", cid, "--json", home=home).stdout)
    assert [m["role"] for m in show["messages"]] == ["user", "assistant"] * 3


def test_foreign_state_file_is_not_used(home, smollm2):
    a = _send(home, smollm2, "Tell me about apples.", "--new")["conversation_id"]
    b = _send(home, smollm2, "Tell me about pears.", "--new")["conversation_id"]
    states = StateFiles(home / "states")
    # Pass a's state off as b's.
    header = json.loads((home / "states" / f"{a}.json").read_text())
    (home / "states" / f"{b}.json").write_text(json.dumps(header))
    second = _send(home, smollm2, "And their colour?", "-c", b)
    assert second["restored_from"] == "transcript"
    assert "another conversation" in second["_stderr"]
    assert states.exists(b)


def test_state_saved_with_another_kv_type_is_not_used(home, smollm2):
    cid = _send(home, smollm2, TURNS[0], "--new")["conversation_id"]
    second = _send(home, smollm2, TURNS[1], "-c", cid, extra=("--kv-type", "q8_0"))
    assert second["restored_from"] == "transcript"
    assert "f16" in second["_stderr"]
    third = _send(home, smollm2, TURNS[2], "-c", cid, extra=("--kv-type", "q8_0"))
    assert third["restored_from"] == "state"


def test_switching_conversations_restores_from_ram(runtime_factory):
    rt = runtime_factory()
    a = rt.new_conversation()
    b = rt.new_conversation()
    a.send("Talk about the sea.", max_tokens=16, temperature=0)
    b.send("Talk about mountains.", max_tokens=16, temperature=0)
    back = a.send("And its colour?", max_tokens=16, temperature=0)
    assert back.stats.restored_from == "memory"
    assert back.stats.prefill_tokens < 20
    assert rt.ram_cache_bytes() > 0  # b is held in RAM now


def test_reopened_conversation_in_a_new_runtime_restores_from_state(runtime_factory, home):
    rt = runtime_factory()
    conv = rt.new_conversation()
    conv.send(TURNS[0], max_tokens=24, temperature=0)
    rt.close()
    rt2 = runtime_factory()
    r = rt2.conversation(conv.id).send(TURNS[1], max_tokens=24, temperature=0)
    assert r.stats.restored_from == "state"
    assert r.stats.restore_s < 1.0


def test_conversation_commands(home, smollm2, tmp_path):
    cid = _send(home, smollm2, "Hello there, who are you?", "--new")["conversation_id"]
    listed = json.loads(run_cli("conversations", "list", "--json", home=home).stdout)
    assert [c["id"] for c in listed] == [cid]
    assert listed[0]["title"].startswith("Hello there")
    assert run_cli("conversations", "rename", cid[:4], "Greetings", home=home).returncode == 0
    md = run_cli("conversations", "export", cid, home=home).stdout
    assert md.startswith("# Greetings") and "## User" in md and "## Assistant" in md
    out = tmp_path / "c.json"
    assert run_cli("conversations", "export", cid, "--format", "json", "-o", str(out), home=home).returncode == 0
    assert len(json.loads(out.read_text())["messages"]) == 2
    assert run_cli("conversations", "delete", cid, "--yes", home=home).returncode == 0
    assert json.loads(run_cli("conversations", "list", "--json", home=home).stdout) == []
    assert not list((home / "states").glob(f"{cid}*"))


def test_continuing_without_a_kv_type_reuses_the_saved_cache_type(home, smollm2):
    # Started with a q8_0 cache; resumed in a new process that names no KV type. The planner
    # alone would pick f16 here (it fits), which could not take the q8_0 state.
    first = _send(home, smollm2, TURNS[0], "--new", extra=("--kv-type", "q8_0"))
    assert first["kv_type"] == "q8_0"
    again = _send(home, smollm2, TURNS[1], "-c", first["conversation_id"])
    assert again["restored_from"] == "state"
    assert again["kv_type"] == "q8_0"
    assert again["prefill_tokens"] < again["context_tokens"] / 2


def _fake_ram(monkeypatch, available: int) -> None:
    from edgechat import memory

    real = memory.probe

    def probe(*, gpus: bool = True):
        snap = real(gpus=gpus)
        return replace(snap, ram_available=available)

    monkeypatch.setattr(memory, "probe", probe)


def test_ram_cache_gives_way_when_free_memory_falls(runtime_factory, monkeypatch):
    notices: list[str] = []
    rt = runtime_factory(on_notice=notices.append)
    a = rt.new_conversation()
    b = rt.new_conversation()
    a.send("Talk about the sea.", max_tokens=8, temperature=0)
    b.send("Talk about mountains.", max_tokens=8, temperature=0)  # a's state moves to RAM
    assert rt.ram_cache_bytes() > 0
    # The machine is short of memory now: below the floor the cache keeps for the system.
    _fake_ram(monkeypatch, available=1 << 20)
    r = b.send("And their height?", max_tokens=8, temperature=0)
    assert rt.ram_cache_bytes() == 0
    assert any("low memory" in n for n in notices)
    assert r.stats.restored_from == "memory"  # the live conversation itself is untouched
    # Switching back to a now reads a's state file: nothing was lost, only the RAM copy.
    back = a.send("And its colour?", max_tokens=8, temperature=0)
    assert back.stats.restored_from == "state"
    assert len(a.messages()) == 4


def test_ram_cache_stays_inside_the_budget(runtime_factory):
    rt = runtime_factory()
    rt.load()
    # Under 1 MiB above what the model itself takes: no room for a ~2 MiB conversation state.
    tight = runtime_factory(budget_mb=-(-rt.plan.total // (1 << 20)))
    a = tight.new_conversation()
    b = tight.new_conversation()
    a.send("Talk about the sea, its tides, its colours and its creatures. " * 5, max_tokens=8, temperature=0)
    b.send("Talk about mountains.", max_tokens=8, temperature=0)
    assert tight.engine is not None and tight.engine.n_ctx == rt.engine.n_ctx  # same plan, just no spare room
    assert tight.ram_cache_bytes() == 0
    assert a.send("And its colour?", max_tokens=8, temperature=0).stats.restored_from == "state"


def test_a_failed_turn_leaves_nothing_for_the_transcript_rebuild_to_reuse(home, smollm2, monkeypatch):
    """A decode that fails leaves the live cache in doubt: the next rebuild from the transcript
    prefills all of it (it neither reuses that cache nor reports reused tokens)."""
    rt = Runtime(model=str(smollm2), home=home, ctx=1024, threads=1)
    try:
        conv = rt.new_conversation()
        conv.send(TURNS[0], max_tokens=8, temperature=0, seed=0)

        def disk_full(*_args: object, **_kwargs: object) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(rt.store, "write_reply", disk_full)
            with pytest.raises(Exception, match="space"):
                conv.send(TURNS[1], max_tokens=8, temperature=0, seed=0)
        assert rt.engine is not None and rt.engine.n_cached == 0
        rt.states.delete(conv.id)  # no state file either: the transcript is all there is
        reply = conv.send(TURNS[2], max_tokens=8, temperature=0, seed=0)
        assert reply.stats.restored_from == "transcript"
        assert reply.stats.reused_tokens == 0 and reply.stats.prefill_tokens > 20, reply.stats
    finally:
        rt.close()
