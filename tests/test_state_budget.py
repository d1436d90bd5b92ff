"""Saved KV states within a disk budget, visible with `edgechat cache`, kept across upgrades (issue 17)."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from edgechat.config import EngineOptions, Paths, load_defaults
from edgechat.errors import ConfigError
from edgechat.gguf_info import read_gguf
from edgechat.state import StateFiles, StateUsage
from edgechat.state_budget import DEFAULT_CAP, budget_bytes, victims
from edgechat.store import Store

# About 90 prompt tokens with the template: a state of ~2 MB (f16), over the 1 MiB step of the budget.
# Questions with one clear answer: greedy replies far from a tie, so a transcript rebuild and a
# restored state (batched differently) answer alike.
LONG = (
    "Capitals: France has Paris, Italy has Rome, Spain has Madrid, Germany has Berlin, Japan has Tokyo,"
    " Egypt has Cairo, Peru has Lima, Kenya has Nairobi. What is the capital of France?"
)
NEXT = "And the capital of Italy?"
SHORT = "Thanks."
FAST = dict(max_tokens=4, temperature=0)
# The runtimes run one thread: ggml's threads spin at each barrier, and on a busy 2-core box two of
# them made these tests 10x slower (5 s against 75 s for the cache commands test).


# the pieces, without a model ---------------------------------------------------------------


def _usage(cid: str, size: int, last: float, complete: bool = True) -> StateUsage:
    return StateUsage(cid, size, last, complete)


def test_victims_are_the_least_recently_used_and_never_the_one_being_saved() -> None:
    usage = {c: _usage(c, 10, t) for c, t in (("a", 1.0), ("b", 3.0), ("c", 2.0), ("me", 0.5))}
    usage["junk"] = _usage("junk", 1, 9.0, complete=False)  # an unfinished save goes first, whatever its age
    assert [u.cid for u in victims(usage, "me", 10, 39)] == ["junk", "a"]
    assert [u.cid for u in victims(usage, "me", 10, 1000)] == []
    assert [u.cid for u in victims(usage, "me", 10, 0)] == ["junk", "a", "c", "b"]  # "me" stays


def test_usage_counts_every_file_of_a_state_and_a_drop_is_said_once(tmp_path: Path) -> None:
    sf = StateFiles(tmp_path)
    h = sf.save("c-1", [1, 2, 3], lambda p: p.write_bytes(b"x" * 1000), model_fingerprint="f", type_k="f16",
                type_v="f16", flash_attn=False, llama_build="b")  # fmt: skip
    (tmp_path / h.payload.replace(".kv", ".ck0")).write_bytes(b"y" * 100)
    (tmp_path / "c-2-123.kv.tmp").write_bytes(b"z" * 50)  # a killed save's leftover
    (tmp_path / "unrelated.txt").write_bytes(b"?")
    usage = sf.usage()
    assert set(usage) == {"c-1", "c-2"}
    assert usage["c-1"].bytes == 1000 + 100 + sf.header_path("c-1").stat().st_size and usage["c-1"].complete
    assert usage["c-2"].bytes == 50 and not usage["c-2"].complete
    before = usage["c-1"].last_used
    os.utime(sf.header_path("c-1"), (before - 100, before - 100))
    sf.touch("c-1")
    assert sf.usage()["c-1"].last_used >= before
    sf.drop("c-1", "the 1 MB state budget was full")
    assert "c-1" not in sf.usage() and not list(tmp_path.glob("c-1-*"))
    assert sf.take_mark("c-1") == "the 1 MB state budget was full"
    assert sf.take_mark("c-1") is None  # said once


def test_the_default_budget_is_the_smaller_of_20_gib_and_a_tenth_of_free_disk() -> None:
    assert budget_bytes(None, 50 << 30, 0) == (5 << 30, "default")
    assert budget_bytes(None, 500 << 30, 0) == (DEFAULT_CAP, "default")
    # The states' own bytes count as free: a filling cache does not shrink its own budget.
    assert budget_bytes(None, 40 << 30, 10 << 30)[0] == 5 << 30
    assert budget_bytes(300, 1, 0) == (300 << 20, "state_budget_mb")


def test_state_budget_mb_in_config_is_checked_and_layered(tmp_path: Path) -> None:
    paths = Paths(data_dir=tmp_path, config_dir=tmp_path)
    paths.user_config.write_text("[defaults]\nstate_budget_mb = 512\n")
    d = load_defaults(paths)
    assert d.state_budget_mb == 512
    assert EngineOptions().over(d).state_budget_mb == 512
    assert EngineOptions(state_budget_mb=64).over(d).state_budget_mb == 64  # the option beats the file
    paths.user_config.write_text('[defaults]\nstate_budget_mb = "lots"\n')
    with pytest.raises(ConfigError, match="state_budget_mb") as err:
        load_defaults(paths)
    assert "e.g. state_budget_mb = " in err.value.hint
    with pytest.raises(ConfigError, match="--state-budget-mb 0"):
        EngineOptions().given(state_budget_mb=0)


# with the model ------------------------------------------------------------------------------


def test_a_budget_keeps_the_most_recently_used_states(runtime_factory, home: Path) -> None:
    rt = runtime_factory(threads=1, kv_type="f16")
    a, b = rt.new_conversation(), rt.new_conversation()
    first = a.send(LONG, **FAST)
    assert b.send(LONG, **FAST).text == first.text
    live = a.send(NEXT, **FAST)  # a is used after b: b is now the least recently used
    rt.close()
    files = StateFiles(home / "states")
    sizes = {cid: u.bytes for cid, u in files.usage().items()}
    assert sizes[b.id] > (1 << 20) + (64 << 10), "states must outweigh the budget's 1 MiB step"
    # Room for a and one more like b, not for a, b and c.
    budget_mb = math.ceil((sizes[a.id] + sizes[b.id] + (64 << 10)) / (1 << 20))

    rt = runtime_factory(threads=1, kv_type="f16", state_budget_mb=budget_mb)
    c = rt.new_conversation()
    first_c = c.send(LONG, **FAST)
    assert first_c.notices == ()  # dropping another conversation's state is not this turn's news
    assert set(files.usage()) == {a.id, c.id}
    rt.close()

    # A new runtime (nothing parked in RAM): b resumes from its transcript, saying so once, and
    # answers as a did from its cache (the same history, greedy).
    rt = runtime_factory(threads=1, kv_type="f16", state_budget_mb=budget_mb)
    b2 = rt.conversation(b.id).send(NEXT, **FAST)
    assert b2.stats.restored_from == "transcript" and b2.stats.reused_tokens == 0
    assert len(b2.notices) == 1 and "dropped" in b2.notices[0] and "budget" in b2.notices[0], b2.notices
    assert b2.text == live.text
    assert files.exists(b.id)  # saved again, under the budget: a (least recently used now) made room
    assert set(files.usage()) == {b.id, c.id}
    assert sum(u.bytes for u in files.usage().values()) <= budget_mb << 20


def test_cache_commands_report_what_is_on_disk_before_and_after_a_prune(runtime_factory, home: Path) -> None:
    rt = runtime_factory(threads=1, kv_type="f16")
    a, b = rt.new_conversation(), rt.new_conversation()
    a.send(LONG, **FAST)
    b.send(SHORT, **FAST)
    rt.close()
    rt = runtime_factory(threads=1, kv_type="f16")
    resumed = rt.conversation(a.id).send(NEXT, **FAST)  # a state restore, for the stats
    rt.close()
    assert resumed.stats.restored_from == "state"

    from typer.testing import CliRunner

    from edgechat.cli import app

    runner = CliRunner()

    def cli(*args: str) -> Any:  # in this process: the commands' own startup is not what is tested
        r = runner.invoke(app, ["--home", str(home), *args, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    files = StateFiles(home / "states")
    listed = {e["id"]: e for e in cli("cache", "list")}
    assert set(listed) == {a.id, b.id}
    for cid, e in listed.items():
        assert e["bytes"] == sum(p.stat().st_size for p in (home / "states").glob(f"{cid}*"))
        assert e["tokens"] == len(files.read_header(cid).tokens) and e["kv_type"] == "f16"
        assert e["valid"] is True and e["problem"] is None and e["model"]
    assert listed[a.id]["last_used"] > listed[b.id]["last_used"]

    stats = cli("cache", "stats")
    assert stats["turns"] == 3
    assert stats["restores"]["new"]["turns"] == 2 and stats["restores"]["state"]["turns"] == 1
    assert stats["tokens_not_prefilled"] == resumed.stats.reused_tokens > 0
    # The first turn of a prefilled enough to measure this machine's rate: the restore saved time.
    assert stats["prefill_rates"] and stats["prefill_saved_s"] > 0
    assert stats["disk"]["states_bytes"] == sum(e["bytes"] for e in listed.values())

    pruned = cli("cache", "prune", b.id[:5])
    assert pruned["dropped"] == [{"id": b.id, "bytes": listed[b.id]["bytes"]}]
    assert pruned["bytes_after"] == pruned["bytes_before"] - listed[b.id]["bytes"]
    assert [e["id"] for e in cli("cache", "list")] == [a.id]
    emptied = cli("cache", "prune", "--to", "0")
    assert emptied["dropped"] == [{"id": a.id, "bytes": listed[a.id]["bytes"]}] and emptied["bytes_after"] == 0
    disk = cli("plan", "-m", str(rt.model_spec), "--ctx", "1024", "--kv-type", "f16")["disk"]
    assert disk["states_bytes"] == 0 and disk["budget_bytes"] > 0 and disk["free_bytes"] > 0
    assert disk["full_context_state_bytes"] >= 1024 * 23_040


def _rewrite_header(states: Path, cid: str, **fields: object) -> dict:
    path = states / f"{cid}.json"
    header = json.loads(path.read_text())
    header.update(fields)
    path.write_text(json.dumps(header))
    return header


def test_a_state_from_another_build_loads_when_llama_cpp_can_read_it(runtime_factory, home: Path) -> None:
    rt = runtime_factory(threads=1, kv_type="f16")
    conv = rt.new_conversation()
    conv.send(SHORT, **FAST)
    rt.close()
    states = home / "states"
    build = json.loads((states / f"{conv.id}.json").read_text())["llama_build"]
    _rewrite_header(states, conv.id, llama_build="llama-cpp-python 0.3.35")
    rt = runtime_factory(threads=1, kv_type="f16")
    r = rt.conversation(conv.id).send("And again.", **FAST)
    assert r.stats.restored_from == "state" and r.notices == ()
    assert json.loads((states / f"{conv.id}.json").read_text())["llama_build"] == build  # saved under this one


def test_a_state_llama_cpp_refuses_falls_back_with_one_notice(runtime_factory, home: Path, smollm2: Path) -> None:
    rt = runtime_factory(threads=1, kv_type="f16")
    conv = rt.new_conversation()
    conv.send(SHORT, **FAST)
    rt.close()
    states = home / "states"
    header = json.loads((states / f"{conv.id}.json").read_text())
    payload = states / header["payload"]
    data = bytearray(payload.read_bytes())
    # llama_state_seq_save_file: magic, version, n_tokens, the tokens; then the KV cache: n_stream,
    # cell_count, per cell (pos, n_seq_id, seq_id), v_trans, n_layer (llama-kv-cache.cpp).
    n = len(header["tokens"])
    at = 12 + 4 * n + 4 + 4 + 12 * n + 4
    assert struct.unpack_from("<I", data, at)[0] == read_gguf(smollm2).n_layer, "the layer count is where expected"
    struct.pack_into("<I", data, at, 7)  # "written by" a build whose cache had 7 layers
    payload.write_bytes(bytes(data))
    _rewrite_header(states, conv.id, llama_build="llama-cpp-python 9.9.9", payload_crc32=zlib.crc32(bytes(data)))

    rt = runtime_factory(threads=1, kv_type="f16")
    r = rt.conversation(conv.id).send("And again.", **FAST)
    assert r.stats.restored_from == "transcript"
    assert len(r.notices) == 1 and "9.9.9" in r.notices[0] and "cannot read" in r.notices[0], r.notices
    assert json.loads((states / f"{conv.id}.json").read_text())["llama_build"] != "llama-cpp-python 9.9.9"
    rt.close()
    rt = runtime_factory(threads=1, kv_type="f16")
    again = rt.conversation(conv.id).send("Once more.", **FAST)
    assert again.stats.restored_from == "state" and again.notices == ()


def test_a_nearly_full_disk_skips_the_save_and_keeps_the_turn(runtime_factory, home, monkeypatch) -> None:
    import edgechat.state_cache as state_cache

    monkeypatch.setattr(state_cache, "disk_space", lambda _path: (300 << 20, 100 << 30))  # 300 MB of 100 GB free
    rt = runtime_factory(threads=1, kv_type="f16")
    conv = rt.new_conversation()
    r = conv.send(SHORT, **FAST)
    assert r.text and r.stats.state_bytes == 0
    assert len(r.notices) == 1 and "nearly full" in r.notices[0] and "not saved" in r.notices[0], r.notices
    assert not list((home / "states").glob("*"))
    assert [m.role for m in conv.messages()] == ["user", "assistant"]


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_that_fills_during_the_save_leaves_no_partial_file(home: Path, smollm2: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "edgechat", "send", SHORT, "--new", "-m", str(smollm2), "--ctx", "1024",
         "--max-tokens", "4", "--json", "--temperature", "0", "--seed", "0", "--threads", "1"],
        capture_output=True, text=True, env={**os.environ, "EDGECHAT_HOME": str(home)}, timeout=300,
        preexec_fn=_limit_file_size(600 << 10),  # the state is ~1 MB; the database stays below
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    reply = json.loads(p.stdout)
    assert reply["reply"] and reply["state_bytes"] == 0
    assert p.stderr.count("note:") == 1 and "could not save the KV state" in p.stderr and "skipped" in p.stderr
    assert not list((home / "states").glob("*")), "no partial files"
    store = Store(home / "conversations.db")
    assert [m.role for m in store.messages(reply["conversation_id"])] == ["user", "assistant"]
    store.close()


def test_the_ui_says_what_a_resume_saved_and_what_each_state_takes() -> None:
    from edgechat.store import ConversationRecord
    from edgechat.tui.figures import restore_phrase
    from edgechat.tui.widgets.conversation_list import describe

    assert restore_phrase("state", 0.03, 0.5, 1494, 4.2) == "resumed 1,494 tokens from cache in 30 ms, saved ~4.2 s"
    assert restore_phrase("memory", 0.001, 0.2, 12) == "resumed 12 tokens from memory in 1 ms"  # no rate measured yet
    record = ConversationRecord("c1", "Bees", "smollm2-135m", {}, 0.0, 0.0, 2, 120)
    assert "3.0 MB" in describe(record, 60, 3 << 20).plain
    assert "MB" not in describe(record, 60).plain
