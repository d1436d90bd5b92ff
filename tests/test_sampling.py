"""Replies that don't loop (issue 19): the sampling defaults, the loop guard, and where sampling comes from.

Precedence under test: edgechat's defaults < the model's recommended sampling (models.toml)
< config.toml < the conversation's settings < options given for the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgechat.config import SamplingSettings, load_defaults, resolve_paths
from edgechat.errors import ConfigError
from edgechat.loop_guard import LoopGuard, repeated_words
from edgechat.registry import Registry

from .conftest import run_cli

# One thread: ggml's worker threads spin while they wait, and on CPUs shared with other work
# (a busy CI box) two of them decoded ~100x slower than one here (0.2 vs 18 tokens/s).
THREADS = ("--threads", "1")
GREEDY = ("--temperature", "0", "--seed", "0", *THREADS)

# A raw completion the small model continues by repeating it, greedy and without a penalty.
LOOP_PROMPT = "the cat sat on the mat, " * 4


def _feed(guard: LoopGuard, tokens: list[int]) -> int | None:
    """The index of the token at which the guard fired, or None."""
    for i, t in enumerate(tokens):
        if guard.add(t):
            return i
    return None


# -- the loop guard, on token ids ----------------------------------------------------------


def test_loop_guard_fires_on_the_third_copy_of_a_span() -> None:
    span = [11, 12, 13, 14, 15]
    hit = _feed(LoopGuard(3), [1, 2, 3] + span * 5)
    assert hit == 3 + 3 * len(span) - 1  # the last token of the third copy
    assert LoopGuard(4).repeats == 4 and _feed(LoopGuard(4), [1, 2, 3] + span * 3) is None


def test_loop_guard_lets_short_repeats_and_varied_text_through() -> None:
    assert _feed(LoopGuard(3), [7, 8] * 10) is None  # "0, 0, 0, ..." in a list: a 2-token span needs 12 copies
    assert _feed(LoopGuard(3), [7, 8] * 12) is not None  # ...and is a loop once it runs on
    assert _feed(LoopGuard(3), list(range(500))) is None
    assert _feed(LoopGuard(3), [1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3, 4]) is None


def test_loop_guard_ignores_spans_without_a_word() -> None:
    pieces = {1: "-", 2: "-", 3: "|", 4: " ", 5: "ab"}

    def text(tokens: Any) -> str:
        return "".join(pieces[t] for t in tokens)

    assert _feed(LoopGuard(3, text), [1, 2, 3, 4] * 6) is None  # a table rule is not a loop
    assert _feed(LoopGuard(3, text), [1, 2, 5, 4] * 3) is not None


def test_repeated_words_is_the_issue_measure() -> None:
    assert repeated_words("la femme au martyre, la femme au martyre, la femme au martyre, la") == "la femme au martyre"
    assert repeated_words("A gentle rain falls. A gentle rain falls. a gentle RAIN falls!") == "a gentle rain falls"
    assert repeated_words("one two three four, one two three four, and then five") is None  # only twice
    assert repeated_words("la Roma, la Roma, la Roma, la Roma") is None  # a 2-word span


# -- the loop guard in a real reply ---------------------------------------------------------


def test_loop_guard_stops_a_forced_loop_and_says_so(runtime_factory, home: Path, smollm2: Path) -> None:
    rt = runtime_factory(threads=1)
    caught = rt.generate(LOOP_PROMPT, raw=True, sampling=rt.sampling(max_tokens=100, temperature=0, repeat_penalty=1.0))
    result = caught.run()
    assert result.finish_reason == "repetition"
    assert result.completion_tokens < 100  # stopped once a span came three times, not at max_tokens
    assert result.sampling["loop_guard"] is True and result.sampling["repeat_penalty"] == 1.0

    free = rt.generate(LOOP_PROMPT, raw=True, sampling=rt.sampling(max_tokens=60, temperature=0, repeat_penalty=1.0, loop_guard=False)).run()  # fmt: skip
    assert free.finish_reason == "length" and free.completion_tokens == 60
    assert repeated_words(free.text) is not None  # the loop the guard cut short

    args = ("generate", "--raw", LOOP_PROMPT, "-m", str(smollm2), "--max-tokens", "100", "--repeat-penalty", "1")
    shown = run_cli(*args, *GREEDY, home=home)
    assert shown.returncode == 0, shown.stderr
    assert "kept repeating itself" in shown.stderr and "repetition" in shown.stderr
    assert "the cat sat on the mat" in shown.stdout


def test_loop_guard_ends_a_saved_turn_and_the_reply_is_stored_whole(runtime_factory) -> None:
    """Without the penalty, greedy SmolLM2 answers this with "la femme au martyre, ..." (issue 19)."""
    rt = runtime_factory(threads=1)
    c = rt.new_conversation()
    r = c.send("What is the capital of France?", max_tokens=120, temperature=0, repeat_penalty=1.0)
    assert r.stats.finish_reason == "repetition" and r.stats.completion_tokens < 120
    assert r.stats.sampling["repeat_penalty"] == 1.0
    reply = c.messages()[-1]
    assert reply.role == "assistant" and reply.content == r.text and not reply.partial


# -- where sampling comes from ----------------------------------------------------------------


def _registry_model_in(home: Path, model: Path, extra: str = "") -> None:
    """Put the test model where the registry's smollm2-135m lives in `home`, plus a user models.toml."""
    dest = home / "models" / model.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.symlink(model, dest)
    (home / "models.toml").write_text(extra, encoding="utf-8")


def test_models_toml_sampling_reaches_the_sampler_and_options_beat_it(home: Path, smollm2: Path) -> None:
    _registry_model_in(
        home, smollm2, '[models."smollm2-135m"]\nsampling = { temperature = 0.0, top_k = 7, repeat_penalty = 1.3 }\n'
    )
    base = ("generate", "Name a colour.", "-m", "smollm2-135m", "--max-tokens", "4", *THREADS, "--json")
    s = json.loads(run_cli(*base, home=home).stdout)["sampling"]
    assert (s["temperature"], s["top_k"], s["repeat_penalty"]) == (0.0, 7, 1.3)
    assert s["top_p"] == SamplingSettings().top_p  # keys the model does not set keep edgechat's defaults

    s = json.loads(run_cli(*base, "--repeat-penalty", "1.05", "--temperature", "0.5", home=home).stdout)["sampling"]
    assert (s["repeat_penalty"], s["temperature"], s["top_k"]) == (1.05, 0.5, 7)

    (home / "config.toml").write_text("[defaults]\nrepeat_penalty = 1.2\nloop_guard = false\n", encoding="utf-8")
    s = json.loads(run_cli(*base, home=home).stdout)["sampling"]
    assert (s["repeat_penalty"], s["loop_guard"], s["top_k"]) == (1.2, False, 7)

    sent = run_cli("send", "--new", "Hi", "-m", "smollm2-135m", "--max-tokens", "4", *THREADS, "--json", home=home)
    assert json.loads(sent.stdout)["sampling"]["repeat_penalty"] == 1.2


def test_a_conversations_settings_beat_the_model_and_the_api_beats_both(home: Path, smollm2: Path) -> None:
    from edgechat import Runtime

    _registry_model_in(home, smollm2, '[models."smollm2-135m"]\nsampling = { temperature = 0.9, max_tokens = 3 }\n')
    with Runtime(model="smollm2-135m", home=home, ctx=512, threads=1) as rt:
        c = rt.new_conversation()
        assert rt.sampling().temperature == 0.9
        rt.store.update(c.id, settings={**c.record.settings, "temperature": 0.0})
        r = c.send("Hi")
        assert (r.stats.sampling["temperature"], r.stats.sampling["max_tokens"]) == (0.0, 3)
        r = c.send("Hi again", max_tokens=2, top_k=5)
        assert (r.stats.sampling["max_tokens"], r.stats.sampling["top_k"]) == (2, 5)


def test_chat_takes_the_sampling_options_and_a_first_chat_suggests_a_model(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import threading

    import edgechat.tui.app as tui_app
    from edgechat.cli import app

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_hub import FakeHub

    made: list[Any] = []
    notices: list[str] = []
    noticed = threading.Event()

    def notice(text: str) -> None:
        notices.append(text)
        noticed.set()

    def fake_run_app(make_runtime: Any, conversation: Any = None, cont: bool = False) -> None:
        made.append(make_runtime(notice))

    monkeypatch.setattr(tui_app, "run_app", fake_run_app)
    opts = ["chat", "--temperature", "0", "--seed", "7", "--max-tokens", "33", "--repeat-penalty", "1.2"]
    with FakeHub() as hub:  # a hub in reach: the first chat suggests the best model that fits
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        result = CliRunner().invoke(app, [*opts, "--no-loop-guard", "--budget-mb", "60000"])
        assert result.exit_code == 0, result.output
        assert noticed.wait(30)
    s = made[0].sampling()
    assert (s.temperature, s.seed, s.max_tokens, s.repeat_penalty, s.loop_guard) == (0.0, 7, 33, 1.2, False)
    assert "this machine fits llama-3.1-8b" in notices[0] and "works offline now" in notices[0]
    made[0].close()


def test_bad_sampling_values_are_one_line_errors(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[defaults]\nrepeat_penalty = "high"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="repeat_penalty"):
        load_defaults(resolve_paths(home))
    (home / "config.toml").write_text("[defaults]\ntop_p = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_defaults(resolve_paths(home))
    (home / "config.toml").unlink()
    r = run_cli("generate", "hi", "--repeat-penalty", "0", home=home)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("sampling = { temprature = 0.5 }", "did you mean `temperature`"),
        ("sampling = { top_k = 0.5 }", "sampling.top_k"),
        ('sampling = "hot"', "must be a table"),
        ("shape = { layers = -1 }", "positive number"),
    ],
)
def test_models_toml_sampling_and_shape_are_validated(table: str, message: str) -> None:
    text = f'[models.m]\nrepo = "o/r"\nfiles.Q4_K_M = "m.gguf"\n{table}\n'
    with pytest.raises(ConfigError, match=message) as err:
        Registry.from_texts([("user.toml", text)])
    assert "user.toml:4" in err.value.message


def test_packaged_models_carry_their_authors_sampling(home: Path) -> None:
    registry = Registry.load(resolve_paths(home))
    assert registry.get("qwen3-4b").sampling["top_k"] == 20
    assert registry.get("gemma-3-4b").sampling["top_k"] == 64
    r = run_cli("models", "info", "qwen3-1.7b", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["recommended_sampling"]["temperature"] == 0.6
    text = run_cli("models", "info", "qwen3-1.7b", home=home).stdout
    assert "temperature = 0.6" in text


@pytest.mark.asyncio
async def test_the_chat_ui_says_when_the_loop_guard_ended_a_reply(
    home: Path, smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the penalty, greedy SmolLM2 answers this with "la femme au martyre, ..." (issue 19)."""
    import time

    from edgechat import Runtime
    from edgechat.config import save_default
    from edgechat.tui.app import EdgechatApp
    from edgechat.tui.widgets.chat_log import MessageView

    monkeypatch.delenv("COLORFGBG", raising=False)
    paths = resolve_paths(home)
    for key, value in (("temperature", 0.0), ("repeat_penalty", 1.0), ("max_tokens", 120)):
        save_default(paths, key, value)
    app = EdgechatApp(lambda notice: Runtime(model=str(smollm2), home=home, ctx=1024, threads=1, on_notice=notice))
    async with app.run_test(size=(100, 30)) as pilot:
        deadline = time.monotonic() + 120
        while not app.chat.model_ready:
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        app.chat.prompt.text = "What is the capital of France?"
        await pilot.press("enter")
        while app.chat.turn is not None or app.chat.last_stats is None:
            assert time.monotonic() < deadline + 120
            await pilot.pause(0.05)
        assert app.chat.last_stats.finish_reason == "repetition"
        replies = [v for v in app.query(MessageView) if v.role == "assistant"]
        assert "repeating itself" in str(replies[-1].border_subtitle)
    assert app.shut_down(timeout=60)
