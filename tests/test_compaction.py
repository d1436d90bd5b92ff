"""A conversation that outgrows its context is compacted, never fails, and loses no message."""

from __future__ import annotations

import pytest

from edgechat.errors import BudgetError

from .conftest import GREEDY, run_cli

TOPICS = ["apples", "rivers", "violins", "lighthouses", "volcanoes", "bicycles", "owls", "glaciers",
          "lanterns", "harbours", "comets", "orchards"]  # fmt: skip


def _chat(conv, turns: int, max_tokens: int = 40):
    replies = []
    for i in range(turns):
        replies.append(
            conv.send(f"Tell me two facts about {TOPICS[i % len(TOPICS)]}.", max_tokens=max_tokens, temperature=0)
        )
    return replies


def test_long_conversation_in_a_small_context_summarizes_repeatedly(runtime_factory):
    rt = runtime_factory(ctx=256, compaction="summarize")
    conv = rt.new_conversation()
    replies = _chat(conv, 12)
    for r in replies:
        assert r.stats.context_tokens <= r.stats.context_limit == 256
    compactions = [r for r in replies if r.stats.compacted]
    assert len(compactions) >= 2
    assert all(r.compaction.summary for r in compactions)
    msgs = conv.messages()
    regular = [m for m in msgs if m.kind == "message"]
    assert len(regular) == 24  # every user message and reply is still in the transcript
    assert sum(m.compacted for m in regular) > 0
    summaries = [m for m in msgs if m.kind == "summary"]
    assert len(summaries) == len(compactions)
    assert sum(not m.compacted for m in summaries) == 1  # one live summary, older ones folded in
    # Still resumable from its saved state, in a fresh runtime.
    rt.close()
    again = runtime_factory(ctx=256, compaction="summarize").conversation(conv.id)
    r = again.send("What did we talk about?", max_tokens=24, temperature=0)
    assert r.stats.restored_from == "state"


def test_truncate_shifts_the_kv_cache_instead_of_re_prefilling(runtime_factory):
    rt = runtime_factory(ctx=512, compaction="truncate")
    conv = rt.new_conversation()
    replies = _chat(conv, 10)
    compacted = [r for r in replies if r.stats.compacted]
    assert compacted
    for r in compacted:
        assert r.compaction.shifted
        assert r.compaction.summary is None
        # Only the new message was prefilled: the kept turns were shifted, not recomputed.
        assert r.stats.prefill_tokens < 40
    assert len([m for m in conv.messages() if m.kind == "message"]) == 20


def test_sliding_window_model_without_full_cache_falls_back_to_re_prefill(home, gemma):
    from edgechat import Runtime

    # Without swa_full the sliding-window cache is smaller than the context (window + ubatch
    # < 1280), so llama.cpp cannot shift it: compaction must re-prefill the kept turns.
    with Runtime(model=str(gemma), home=home, ctx=1280, threads=2, compaction="truncate", swa_full=False) as rt:
        rt.load()
        assert not rt.engine.can_shift
        conv = rt.new_conversation()
        replies = []
        for i in range(14):
            text = f"Here are my notes on {TOPICS[i % len(TOPICS)]}: " + " ".join(TOPICS) * 6
            replies.append(conv.send(text, max_tokens=16, temperature=0))
        compacted = [r for r in replies if r.stats.compacted]
        assert compacted
        assert not any(r.compaction.shifted for r in compacted)
        assert all(r.stats.context_tokens <= 1280 for r in replies)
        assert len([m for m in conv.messages() if m.kind == "message"]) == 28


def test_compaction_off_refuses_the_turn_and_keeps_the_transcript(home, smollm2):
    import json

    args = ("-m", str(smollm2), "--ctx", "256", "--max-tokens", "48", "--compaction", "off", *GREEDY)
    first = run_cli("send", "Tell me about apples.", "--new", "--json", *args, home=home)
    assert first.returncode == 0, first.stderr
    cid = json.loads(first.stdout)["conversation_id"]
    failed = None
    for topic in TOPICS:
        p = run_cli("send", f"Tell me about {topic}.", "-c", cid, *args, home=home)
        if p.returncode != 0:
            failed = p
            break
    assert failed is not None
    assert "context" in failed.stderr and "--compaction" in failed.stderr and "Traceback" not in failed.stderr
    msgs = json.loads(run_cli("conversations", "show", cid, "--json", home=home).stdout)["messages"]
    assert len(msgs) % 2 == 0 and not any(m["compacted"] for m in msgs)


def test_a_message_larger_than_the_context_is_a_clear_error(runtime_factory):
    rt = runtime_factory(ctx=256)
    conv = rt.new_conversation()
    with pytest.raises(BudgetError, match="context"):
        conv.send("word " * 400, max_tokens=16, temperature=0)
    assert conv.messages() == []


def test_an_explicit_policy_beats_the_one_the_conversation_stored(runtime_factory):
    rt = runtime_factory(ctx=256, compaction="off")
    conv = rt.new_conversation()
    assert conv.record.settings["compaction"] == "off"
    rt.close()
    again = runtime_factory(ctx=256, compaction="truncate").conversation(conv.id)
    replies = _chat(again, 8)
    assert [r.compaction.policy for r in replies if r.compaction] and all(
        r.compaction.policy == "truncate" for r in replies if r.compaction
    )
    # Without an explicit policy, the stored one holds.
    with pytest.raises(BudgetError, match="--compaction"):
        _chat(runtime_factory(ctx=256).conversation(conv.id), 8)


def test_a_reply_may_run_past_the_room_kept_for_it(runtime_factory):
    # ctx 256 keeps 64 tokens free for a reply when deciding to compact; the reply itself
    # may be longer, up to --max-tokens, while the context lasts.
    rt = runtime_factory(ctx=256)
    r = rt.new_conversation().send("Count from 1 to 100, separated by commas.", max_tokens=120, temperature=0)
    assert r.stats.completion_tokens > 64
    assert r.stats.context_tokens <= 256
