"""Resume is exact and cheap on every memory kind: dense, sliding-window and hybrid.

Dense SmolLM2 trims its cache exactly. Gemma 3's sliding-window layers keep only the last
window, and a restored state holds only that window, so a trim can leave a hole that
llama.cpp does not report. The tiny hybrids (qwen35, lfm2) cannot trim a tail at all. Context
checkpoints, taken during prefill and saved beside the state, make all of them rewind exactly.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from edgechat.config import EngineSettings
from edgechat.engine import Engine
from edgechat.state import StateFiles

KINDS = ["dense", "swa", "qwen35", "lfm2"]


@pytest.fixture(scope="session")
def model_paths(smollm2: Path, gemma: Path, tiny_qwen35: Path, tiny_lfm2: Path) -> dict[str, Path]:
    return {"dense": smollm2, "swa": gemma, "qwen35": tiny_qwen35, "lfm2": tiny_lfm2}


def _engine(path: Path, n_ctx: int = 2048) -> Engine:
    return Engine(EngineSettings(model_path=str(path), n_ctx=n_ctx, threads=2))


def _tokens(eng: Engine, n: int, seed: int) -> list[int]:
    """n tokens of natural text on real vocabularies, random ids on the tiny test vocabulary."""
    if eng.kind in ("hybrid", "recurrent"):
        rng = random.Random(seed)
        return [rng.randrange(128) for _ in range(n)]
    from importlib.resources import files

    text = files("edgechat").joinpath("data/sample_text.txt").read_text(encoding="utf-8")
    toks = eng.tokenize(text, add_bos=True, special=False)
    start = seed * 7
    return toks[:1] + toks[1 + start : n + start]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)


def _fresh_logits(eng: Engine, chunks: list[list[int]]) -> list[float]:
    eng.clear()
    for chunk in chunks:
        eng.eval(chunk)
    return eng.next_logits()


@pytest.mark.parametrize("kind", KINDS)
def test_a_restored_state_rewound_at_the_tail_matches_a_fresh_prefill(kind, model_paths, tmp_path):
    eng = _engine(model_paths[kind])
    try:
        assert eng.kind == {"dense": "dense", "swa": "swa"}.get(kind, "hybrid")
        # Gemma needs more than its 512-token window to show the hole; the others do not.
        n = 600 if kind == "swa" else 300
        saved = _tokens(eng, n, seed=1)
        new = _tokens(eng, 6, seed=2)[1:]
        far = n - eng.n_swa - 8 if kind == "swa" else 120
        points = [far - 20, n - 4]

        # The turn that wrote the state: prefilled with checkpoints at `points`.
        eng.clear()
        eng.generate(saved, _greedy(1), checkpoint_at=points).run()  # one token, sampled but not evaluated
        assert eng.cached_tokens == saved
        assert [ck.n_tokens for ck in eng.checkpoints] == ([] if kind == "dense" else points)
        files = StateFiles(tmp_path / "states")
        header = files.save("c1", eng.cached_tokens, eng.save_state, eng.checkpoints, **_fields())

        for r in (1, 2, n - far):
            d = n - r
            eng.clear()
            eng.load_state(files.verified_payload(header), header.tokens, files.checkpoints(header))
            prompt = saved[:d] + new
            rewind = eng.prepare(prompt)
            assert eng.cached_tokens == prompt[: rewind.kept]
            used = rewind.kept
            eng.eval(prompt[used:])
            resumed = eng.next_logits()
            if kind in ("qwen35", "lfm2"):
                # A fresh prefill split where the resumed one was: same batches, same floats.
                cuts = sorted({0, *[p for p in points if p <= used], len(prompt)})
                fresh = _fresh_logits(eng, [prompt[a:b] for a, b in zip(cuts, cuts[1:], strict=False)])
                assert rewind.how == "checkpoint"
                assert resumed == fresh, f"rewind by {r}: not bit-exact"
                continue
            if kind == "swa" and r >= 2:
                assert rewind.how == "checkpoint", f"rewind by {r} trusted a window with a hole"
            # ggml's CPU kernels round differently by batch shape: the floor is the distance
            # between two fresh prefills of these tokens, one split where the resumed one was.
            fresh = _fresh_logits(eng, [prompt])
            noise = 1 - _cos(fresh, _fresh_logits(eng, [prompt[:used], prompt[used:]]))
            assert _argmax(resumed) == _argmax(fresh)
            assert 1 - _cos(resumed, fresh) <= max(2 * noise, 1e-6), (r, rewind, noise)
    finally:
        eng.close()


def test_a_sliding_window_trim_after_restore_is_refused(model_paths, tmp_path):
    """The hole llama.cpp does not report: seq_rm says yes, the window says no."""
    eng = _engine(model_paths["swa"])
    try:
        toks = _tokens(eng, 900, seed=3)
        eng.eval(toks)
        path = tmp_path / "g.kv"
        eng.save_state(path)
        eng.load_state(path, toks)
        assert eng.rewind(600).how == "clear"  # no checkpoints: only a re-prefill is exact
        eng.load_state(path, toks)
        assert eng.rewind(899).how == "trim"  # one token back leaves the window whole
    finally:
        eng.close()


def test_hybrids_never_shift(model_paths):
    eng = _engine(model_paths["lfm2"])
    try:
        assert eng.kind == "hybrid" and not eng.can_shift
    finally:
        eng.close()


def _greedy(n: int):
    from edgechat.config import SamplingSettings

    return SamplingSettings(max_tokens=n, temperature=0.0, seed=0)


def _fields() -> dict:
    return dict(model_fingerprint="x", type_k="f16", type_v="f16", flash_attn=False, llama_build="b")


# Whole conversations through the turn pipeline --------------------------------------------


def _runtime(path: Path, home: Path, **kw):
    from edgechat import Runtime

    kw.setdefault("ctx", 2048)
    return Runtime(model=str(path), home=home, threads=2, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_a_conversation_resumed_before_every_turn_prefills_only_the_new_turn(kind, model_paths, tmp_path):
    """20 turns, each in a fresh runtime (a new llama.cpp context restored from the state files)."""
    home = tmp_path / "home"
    with _runtime(model_paths[kind], home) as rt:
        cid = rt.new_conversation().id
    previous_reply = ""
    for turn in range(20):
        text = f"Turn {turn}: tell me one more thing about rivers."
        with _runtime(model_paths[kind], home) as rt:
            r = rt.conversation(cid).send(text, max_tokens=6, temperature=0)
            eng = rt.engine
            # What a turn must re-read: its own message and the template's framing, plus, on
            # models whose reply does not re-tokenize to what was generated, that reply.
            budget = eng.count_tokens(text) + 16
            if eng.kind == "hybrid":
                budget += eng.count_tokens(previous_reply) + 4
            if turn == 0:
                assert r.stats.restored_from == "new"
            else:
                assert r.stats.restored_from in ("state", "checkpoint"), r.notices
                assert r.stats.prefill_tokens <= budget, (turn, r.stats)
            previous_reply = r.text


def test_a_damaged_checkpoint_costs_a_notice_and_a_re_prefill_never_a_wrong_answer(tiny_qwen35, tmp_path):
    def conversation(home: Path, damage: bool) -> tuple[str, str, tuple[str, ...]]:
        with _runtime(tiny_qwen35, home) as rt:
            conv = rt.new_conversation()
            conv.send("First message about boats.", max_tokens=8, temperature=0)
            cid = conv.id
        if damage:
            for ck in (home / "states").glob(f"{cid}-*.ck*"):
                ck.write_bytes(b"\0" * ck.stat().st_size)
        with _runtime(tiny_qwen35, home) as rt:
            r = rt.conversation(cid).send("Second message.", max_tokens=8, temperature=0)
        return r.text, r.stats.restored_from, r.notices

    clean_text, clean_source, _ = conversation(tmp_path / "clean", damage=False)
    text, source, notices = conversation(tmp_path / "damaged", damage=True)
    assert clean_source == "checkpoint"
    assert source == "transcript"
    assert any("checkpoint" in n and "damaged" in n for n in notices), notices
    assert text == clean_text


def test_compaction_on_a_hybrid_never_shifts_the_cache(tiny_lfm2, tmp_path):
    with _runtime(tiny_lfm2, tmp_path / "home", ctx=256, compaction="truncate") as rt:
        conv = rt.new_conversation()
        results = [conv.send(f"Message {i} about the weather today.", max_tokens=24, temperature=0) for i in range(12)]
    compactions = [r.compaction for r in results if r.compaction is not None]
    assert compactions, "the conversation never outgrew its context"
    assert not any(c.shifted for c in compactions)


def test_the_chat_ui_names_a_checkpoint_resume():
    from edgechat.tui.figures import restore_phrase

    assert restore_phrase("checkpoint", 0.01, 0.25).startswith("resumed from a checkpoint in")


@pytest.mark.parametrize("kind", KINDS)
def test_regenerate_in_a_new_process_prefills_only_the_header_and_keeps_the_old_reply(kind, model_paths, tmp_path):
    home = tmp_path / "home"
    with _runtime(model_paths[kind], home) as rt:
        conv = rt.new_conversation()
        for text in ("Tell me about rivers.", "And about lakes?", "Which is deeper?"):
            old = conv.send(text, max_tokens=12, temperature=0)
        cid = conv.id
    with _runtime(model_paths[kind], home) as rt:
        again = rt.conversation(cid).regenerate(max_tokens=12, temperature=0.8, seed=7).run()
        messages = rt.conversation(cid).messages()
    # A short Gemma conversation still fits its window, so a trim is exact there; hybrids never trim.
    expected = {"dense": ("state",), "swa": ("state", "checkpoint")}.get(kind, ("checkpoint",))
    assert again.stats.restored_from in expected, again.notices
    assert again.stats.prefill_tokens <= 6, again.stats  # the generation header, not the history
    replaced = [m for m in messages if m.replaced]
    assert [m.content for m in replaced] == [old.text]
