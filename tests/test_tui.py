"""The Textual UI, driven by Textual's pilot over the real app and the real small model (greedy)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList, ProgressBar, Select, TextArea

from edgechat import Runtime
from edgechat.config import load_defaults, resolve_paths, save_default
from edgechat.tui.app import EdgechatApp
from edgechat.tui.screens.compaction_view import CompactionView
from edgechat.tui.screens.model_picker import ModelPicker
from edgechat.tui.screens.settings import SettingsScreen
from edgechat.tui.widgets.chat_log import Notice

sys.path.insert(0, str(Path(__file__).parent))
from fake_hub import FakeHub, register_on_hub  # noqa: E402

WIDE = (100, 30)  # wide enough for the sidebar
LONG_PROMPT = (
    "Write a very long and detailed story about a lighthouse keeper on a remote island, "
    "the storms she lives through, the ships she guides, and the letters she writes home."
)


@pytest.fixture()
def make_app(smollm2: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., EdgechatApp]]:
    """Apps on the small model, greedy, 2 threads; the runtime each one built is closed at teardown."""
    monkeypatch.delenv("COLORFGBG", raising=False)  # the theme must not depend on the terminal running the tests
    paths = resolve_paths(home)
    save_default(paths, "temperature", 0.0)
    apps: list[EdgechatApp] = []

    def make(
        *, max_tokens: int = 40, ctx: int = 1024, model: str | None = None, explicit: bool = True, **kw: Any
    ) -> EdgechatApp:
        """`explicit=False`: the model comes from config.toml, as when `edgechat chat` runs without -m."""
        save_default(paths, "max_tokens", max_tokens)
        if not explicit:
            save_default(paths, "model", model or str(smollm2))

        def make_runtime(on_notice: Callable[[str], None]) -> Runtime:
            return Runtime(
                model=(model or str(smollm2)) if explicit else None,
                home=home, ctx=ctx, threads=2, kv_type="f16", on_notice=on_notice,
            )  # fmt: skip

        app = EdgechatApp(make_runtime, **kw)
        app.notices = []  # type: ignore[attr-defined]
        notify = app.notify

        def recording_notify(message: str, *, title: str = "", severity: str = "information", **rest: Any) -> None:
            app.notices.append((severity, title, message))  # type: ignore[attr-defined]
            notify(message, title=title, severity=severity, **rest)  # type: ignore[arg-type]

        app.notify = recording_notify  # type: ignore[method-assign]
        apps.append(app)
        return app

    yield make
    for app in apps:
        assert app.shut_down(timeout=60), "the llama thread did not finish"


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the UI"
        await pilot.pause(0.05)


def status_text(app: EdgechatApp) -> str:
    return app.chat.status.render().plain


async def send(pilot: Pilot[Any], app: EdgechatApp, text: str) -> None:
    """Type a message and press Enter, then wait for the reply to finish."""
    done = app.chat.last_stats
    app.chat.prompt.text = text
    await pilot.press("enter")
    await until(pilot, lambda: app.chat.turn is None and app.chat.last_stats is not done)


async def start_long_reply(pilot: Pilot[Any], app: EdgechatApp) -> None:
    """Once the model is ready, send LONG_PROMPT and wait until the reply reaches the screen."""
    await until(pilot, lambda: app.chat.model_ready)
    app.chat.prompt.text = LONG_PROMPT
    # The Enter key event goes straight to the box so the test is not held up until the reply ends.
    app.chat.prompt.post_message(events.Key("enter", "\r"))
    await until(pilot, lambda: app.chat.turn is not None and app.chat.turn.view.first_paint is not None)


def stored_record(app: EdgechatApp) -> Any:
    assert app.runtime is not None and app.chat.conversation_id is not None
    return app.runtime.store.conversation(app.chat.conversation_id)


def stored(app: EdgechatApp) -> list[Any]:
    assert app.runtime is not None and app.chat.conversation_id is not None
    return app.runtime.conversation(app.chat.conversation_id).messages()


@pytest.mark.asyncio
async def test_reply_streams_into_the_log_and_is_stored(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(max_tokens=48)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        assert "f16" in status_text(app) and "/1024" in status_text(app)
        # Ctrl+J adds a line instead of sending.
        await pilot.press("H", "i", "ctrl+j")
        assert app.chat.prompt.text == "Hi\n" and app.chat.turn is None
        await send(pilot, app, "Hi\nWhat is the capital of France?")
        user, reply = app.chat.chat_log.message_views()
        assert user.text == "Hi\nWhat is the capital of France?"
        assert reply.text.strip()
        assert reply.flushes >= 2, "the reply reached the screen in several batches while it was generated"
        messages = stored(app)
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[1].content == reply.text and not messages[1].partial
        assert app.chat.prompt.text == ""
        assert "TTFT" in status_text(app) and "tok/s" in status_text(app)
        titles = [str(o.prompt) for o in app.chat.sidebar.query_one(OptionList).options]
        assert any(t.startswith("Hi") for t in titles), titles
        assert app.chat.last_reply == reply.text


@pytest.mark.asyncio
async def test_escape_stops_the_reply_and_keeps_it_marked_partial(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(max_tokens=300)
    async with app.run_test(size=WIDE) as pilot:
        await start_long_reply(pilot, app)
        await pilot.press("escape")
        await until(pilot, lambda: app.chat.turn is None and app.chat.last_stats is not None)
        assert app.chat.last_stats is not None and app.chat.last_stats.finish_reason == "cancelled"
        assert app.chat.last_stats.completion_tokens < 256
        reply = app.chat.chat_log.message_views()[-1]
        assert reply.has_class("-partial") and reply.border_subtitle == "stopped · partial"
        last = stored(app)[-1]
        assert last.role == "assistant" and last.partial and last.content == reply.text


@pytest.mark.asyncio
async def test_switching_away_and_back_resumes_from_memory(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(max_tokens=16)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        await send(pilot, app, "Name a colour.")
        first = app.chat.conversation_id
        await pilot.press("ctrl+n")
        assert app.chat.conversation_id is None and not app.chat.chat_log.message_views()
        await send(pilot, app, "Name a fruit.")
        assert app.chat.conversation_id != first
        # Back to the first conversation through the sidebar, by keyboard.
        options = app.chat.sidebar.query_one(OptionList)
        options.focus()
        options.highlighted = options.get_option_index(first)
        await pilot.press("enter")
        assert app.chat.conversation_id == first
        assert [v.role for v in app.chat.chat_log.message_views()] == ["user", "assistant"]
        await send(pilot, app, "Name another one.")
        assert app.chat.last_stats is not None and app.chat.last_stats.restored_from == "memory"
        assert "from memory in" in status_text(app)
        assert len(stored(app)) == 4


@pytest.mark.asyncio
async def test_continue_reopens_a_conversation_from_its_saved_state(
    make_app: Callable[..., EdgechatApp], smollm2: Path, home: Path
) -> None:
    with Runtime(model=str(smollm2), home=home, ctx=1024, threads=2, kv_type="f16") as rt:
        conv = rt.new_conversation()
        conv.send("Say hello.", max_tokens=16, temperature=0)
        earlier = conv.id
    app = make_app(max_tokens=16, cont=True)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        assert app.chat.conversation_id == earlier
        assert [v.role for v in app.chat.chat_log.message_views()] == ["user", "assistant"]
        await send(pilot, app, "Say goodbye.")
        assert app.chat.last_stats is not None and app.chat.last_stats.restored_from == "state"
        assert re.search(r"resumed [\d,]+ tokens from cache in", status_text(app)), status_text(app)


@pytest.mark.asyncio
async def test_a_corrupt_state_is_a_notice_and_the_transcript_rebuilds_it(
    make_app: Callable[..., EdgechatApp], smollm2: Path, home: Path
) -> None:
    with Runtime(model=str(smollm2), home=home, ctx=1024, threads=2, kv_type="f16") as rt:
        conv = rt.new_conversation()
        conv.send("Say hello.", max_tokens=16, temperature=0)
        cid = conv.id
        for payload in rt.states.dir.glob(f"{cid}-*.kv"):
            payload.write_bytes(b"\0" * payload.stat().st_size)
    app = make_app(max_tokens=16, conversation=cid)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        await send(pilot, app, "Say goodbye.")
        assert app.chat.last_stats is not None and app.chat.last_stats.restored_from == "transcript"
        assert "rebuilt from transcript in" in status_text(app)
        assert any(sev == "warning" and "not used" in msg for sev, _, msg in app.notices)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_compaction_shows_a_notice_and_the_compacted_messages(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(max_tokens=64, ctx=256)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        for i in range(6):
            await send(pilot, app, f"Tell me fact number {i} about the ocean, in detail.")
            if app.chat.chat_log.query(Notice).filter(".-compaction"):
                break
        notices = list(app.chat.chat_log.query(Notice).filter(".-compaction"))
        assert notices, "no compaction notice after six turns in a 256-token context"
        assert "summarized" in str(notices[0].render())
        assert app.chat.last_stats is not None and app.chat.last_stats.compacted
        assert any(v.has_class("-compacted") for v in app.chat.chat_log.message_views())
        await pilot.press("ctrl+g")
        assert isinstance(app.screen, CompactionView)
        assert app.screen.summaries and app.screen.compacted
        await pilot.press("escape")
        assert not isinstance(app.screen, CompactionView)


@pytest.mark.asyncio
async def test_a_missing_model_is_a_notification_not_a_crash(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(model="/nonexistent/model.gguf")
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: any(sev == "error" for sev, _, _ in app.notices))  # type: ignore[attr-defined]
        severity, title, hint = app.notices[-1]  # type: ignore[attr-defined]
        assert "no such model file" in title and "Ctrl+O" in hint
        app.chat.prompt.text = "Hello?"
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.turn is None and len(app.notices) >= 2)  # type: ignore[attr-defined]
        assert app.notices[-1][0] == "error"  # type: ignore[attr-defined]
        user = app.chat.chat_log.message_views()[-1]
        assert user.role == "user" and user.has_class("-error")
        assert app.is_running


@pytest.mark.asyncio
async def test_a_runtime_that_cannot_start_is_a_notification_and_the_chat_stays_up(home: Path) -> None:
    from edgechat.errors import ConfigError

    def make_runtime(on_notice: Callable[[str], None]) -> Runtime:
        raise ConfigError("unknown KV cache type 'q3'", "use one of f16, q8_0, q4_0")

    app = EdgechatApp(make_runtime)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.runtime is None and app.store is None
        assert "no runtime" in status_text(app)
        app.chat.prompt.text = "Hello?"
        await pilot.press("enter")
        assert app.chat.turn is None and app.is_running
    assert app.shut_down(timeout=10)


# Snapshots: 80x24, model loaded, volatile figures (RAM, timings) hidden by EDGECHAT_SNAPSHOT.


def snapshot_app(make_app: Callable[..., EdgechatApp], monkeypatch: pytest.MonkeyPatch) -> EdgechatApp:
    monkeypatch.setenv("EDGECHAT_SNAPSHOT", "1")
    return make_app()


async def loaded(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, EdgechatApp)
    await until(pilot, lambda: app.chat.model_ready)
    await pilot.pause()


def test_snapshot_empty_chat(
    make_app: Callable[..., EdgechatApp], monkeypatch: pytest.MonkeyPatch, snap_compare: Any
) -> None:
    assert snap_compare(snapshot_app(make_app, monkeypatch), terminal_size=(80, 24), run_before=loaded)


def test_snapshot_settings(
    make_app: Callable[..., EdgechatApp], monkeypatch: pytest.MonkeyPatch, snap_compare: Any
) -> None:
    async def open_settings(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await pilot.press("ctrl+s")
        assert isinstance(pilot.app.screen, SettingsScreen)
        await pilot.pause()

    assert snap_compare(snapshot_app(make_app, monkeypatch), terminal_size=(80, 24), run_before=open_settings)


def test_snapshot_model_picker(
    make_app: Callable[..., EdgechatApp], monkeypatch: pytest.MonkeyPatch, snap_compare: Any
) -> None:
    async def open_picker(pilot: Pilot[Any]) -> None:
        await loaded(pilot)
        await pilot.press("ctrl+o")
        assert isinstance(pilot.app.screen, ModelPicker)
        await pilot.pause()

    assert snap_compare(snapshot_app(make_app, monkeypatch), terminal_size=(80, 24), run_before=open_picker)


@pytest.mark.asyncio
async def test_rename_search_and_delete_from_the_sidebar(make_app: Callable[..., EdgechatApp], home: Path) -> None:
    with Runtime(home=home) as rt:  # conversations only: no model is loaded
        keep = rt.new_conversation(title="Alpha notes").id
        gone = rt.new_conversation(title="Beta plans").id
    app = make_app(autoload=False)
    async with app.run_test(size=WIDE) as pilot:
        options = app.chat.sidebar.query_one(OptionList)
        assert options.option_count == 2
        options.focus()
        options.highlighted = options.get_option_index(keep)
        await pilot.press("r")
        await pilot.pause()
        app.screen.query_one("#title", Input).value = "Gamma notes"
        await pilot.press("enter")
        assert app.runtime is not None and app.runtime.store.conversation(keep).title == "Gamma notes"
        # Typing in the search box filters by title and does not trigger the list's one-key verbs.
        await pilot.press("ctrl+f")
        await pilot.press("n", "o", "t", "e", "s")
        assert options.option_count == 1 and app.chat.conversation_id is None
        app.chat.sidebar.query_one("#search", Input).value = ""
        await pilot.pause()
        options.focus()
        options.highlighted = options.get_option_index(gone)
        await pilot.press("delete")
        await pilot.press("y")
        assert [r.id for r in app.runtime.conversations()] == [keep]
        assert options.option_count == 1


@pytest.mark.asyncio
async def test_settings_are_saved_per_conversation_and_as_defaults(
    make_app: Callable[..., EdgechatApp], home: Path
) -> None:
    app = make_app(max_tokens=8)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        await send(pilot, app, "Hello.")
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SettingsScreen)
        app.screen.query_one("#max_tokens", Input).value = "12"
        app.screen.query_one("#system_prompt", TextArea).text = "Answer in one word."
        await pilot.click("#save")
        settings = stored_record(app).settings
        assert settings["max_tokens"] == 12 and settings["system_prompt"] == "Answer in one word."
        assert settings["temperature"] == 0.0
        # An engine setting saved as default reloads the model with it.
        await pilot.press("ctrl+s")
        app.screen.query_one("#kv_type", Select).value = "q8_0"
        await pilot.click("#default")
        await until(pilot, lambda: app.chat.model_ready and app.runtime is not None and app.runtime.engine is not None)
        assert app.runtime is not None and app.runtime.engine is not None
        assert app.runtime.engine.settings.type_k == "q8_0" and "q8_0" in status_text(app)
        defaults = load_defaults(resolve_paths(home))
        assert defaults.kv_type == "q8_0" and defaults.max_tokens == 12
        await send(pilot, app, "And again.")
        assert app.chat.last_stats is not None and app.chat.last_stats.kv_type == "q8_0"
        # Back to automatic as the default: the saved key goes, so the planner decides again.
        await pilot.press("ctrl+s")
        app.screen.query_one("#kv_type", Select).value = "auto"
        await pilot.click("#default")
        await until(pilot, lambda: app.chat.model_ready)
        assert load_defaults(resolve_paths(home)).kv_type is None


@pytest.mark.asyncio
async def test_the_theme_follows_the_terminal_and_a_chosen_theme_is_kept(
    make_app: Callable[..., EdgechatApp], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLORFGBG", "0;15")  # black on white, as rxvt and Konsole announce it
    app = make_app(autoload=False)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert app.theme == "textual-light"
        assert load_defaults(resolve_paths(home)).theme == "auto"  # following the terminal is not a choice
        app.theme = "nord"  # what the command palette's theme picker does
        await pilot.pause()
    assert load_defaults(resolve_paths(home)).theme == "nord"
    again = make_app(autoload=False)
    async with again.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert again.theme == "nord"


@pytest.mark.asyncio
async def test_the_model_picker_loads_a_local_file(make_app: Callable[..., EdgechatApp], smollm2: Path) -> None:
    app = make_app(model="smollm2-135m", autoload=False)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, ModelPicker)
        assert app.screen.rows, "the registry lists its models"
        app.screen.query_one("#path", Input).value = str(smollm2)
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.model_ready)
        assert app.runtime is not None and app.runtime.model_name == smollm2.stem
        assert smollm2.stem[:12] in status_text(app)


@pytest.mark.asyncio
async def test_the_model_picker_downloads_with_progress_then_chats_with_the_model(
    make_app: Callable[..., EdgechatApp], smollm2: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = smollm2.read_bytes()
    paths = resolve_paths(home)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    with FakeHub() as hub:
        sha256 = hub.add("edgechat-test/smol-GGUF", "smol-q4_1.gguf", data)
        register_on_hub(
            paths.user_registry, "smol-hub", "edgechat-test/smol-GGUF", "smol-q4_1.gguf", sha256,
            quant="Q4_1", context_length=8192,
        )  # fmt: skip
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        app = make_app(autoload=False)
        async with app.run_test(size=WIDE) as pilot:
            await pilot.press("ctrl+o")
            picker = app.screen
            assert isinstance(picker, ModelPicker)
            names = [row.name for row in picker.rows]
            assert not picker.rows[names.index("smol-hub")].downloaded
            picker.query_one(DataTable).move_cursor(row=names.index("smol-hub"))
            bar = picker.query_one(ProgressBar)
            seen: list[float] = []
            bar.watch(bar, "progress", lambda value: seen.append(value))  # every step the bar shows
            await pilot.press("enter")  # "Use" on a model that is not here yet downloads it first
            await until(pilot, lambda: app.screen is not picker and app.chat.model_ready)
            assert bar.total == len(data) and seen[-1] == len(data)
            assert len([p for p in seen if 0 < p < len(data)]) >= 2, "the bar moved while the file came in"
            assert app.runtime is not None and app.runtime.model_spec == "smol-hub"
            assert ("information", "download finished", "smol-hub is ready") in app.notices  # type: ignore[attr-defined]
            await send(pilot, app, "Hi!")
            assert stored(app)[-1].role == "assistant" and stored(app)[-1].content
    downloaded = list(paths.models_dir.rglob("smol-q4_1.gguf"))
    assert len(downloaded) == 1 and downloaded[0].stat().st_size == len(data)


@pytest.mark.asyncio
async def test_ctrl_q_during_a_reply_stops_it_and_quits_cleanly(
    make_app: Callable[..., EdgechatApp], smollm2: Path, home: Path
) -> None:
    app = make_app(max_tokens=300)
    async with app.run_test(size=WIDE) as pilot:
        await start_long_reply(pilot, app)
        cid = app.chat.turn.conversation_id if app.chat.turn else ""
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running, timeout=30)
    assert app.return_code in (None, 0)
    with Runtime(model=str(smollm2), home=home, ctx=1024, threads=2) as rt:
        last = rt.conversation(cid).messages()[-1]
        assert last.role == "assistant" and last.partial
        assert rt.states.exists(cid), "the KV state was saved before the app quit"


@pytest.mark.asyncio
async def test_replies_render_as_markdown_and_copy_to_the_clipboard(
    make_app: Callable[..., EdgechatApp], home: Path
) -> None:
    from textual.widgets._markdown import MarkdownFence

    from edgechat.store import NewMessage

    answer = "Here it is:\n\n```python\nprint('hi')\n```\n\nThat prints **hi**."
    with Runtime(home=home) as rt:
        cid = rt.new_conversation(title="Code").id
        rt.store.append_turn(cid, [NewMessage("user", "Show me code."), NewMessage("assistant", answer)])
    app = make_app(conversation=cid, autoload=False)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        reply = app.chat.chat_log.message_views()[-1]
        fences = list(reply.query(MarkdownFence))
        assert len(fences) == 1 and "print('hi')" in fences[0].code
        await pilot.press("ctrl+l")
        assert app.clipboard == answer
        assert any("copied" in message for _sev, _title, message in app.notices)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_status_bar_shows_kv_size_and_memory_against_the_budget(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(max_tokens=8)
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        await send(pilot, app, "Hello!")
        app.chat.probe_memory()
        await until(pilot, lambda: "RAM" in status_text(app))
        text = status_text(app)
        assert app.runtime is not None and app.runtime.plan is not None
        budget = app.runtime.plan.budget_ram >> 20
        assert "budget" in text and "KV " in text and "MB" in text
        assert app.chat.status.figures.budget_mb == budget and app.chat.status.figures.kv_bytes > 0


@pytest.mark.asyncio
async def test_the_chat_keys_and_commands_are_silent_under_a_dialog(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(autoload=False)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("ctrl+s")
        settings = app.screen
        assert isinstance(settings, SettingsScreen)
        before = list(app.notices)  # type: ignore[attr-defined]
        # On the chat screen Ctrl+L and Ctrl+G would say there is nothing to copy or show, Ctrl+O
        # would open the model picker, Ctrl+B would hide the sidebar.
        for key in ("ctrl+n", "ctrl+o", "ctrl+l", "ctrl+g", "ctrl+b", "ctrl+t"):
            await pilot.press(key)
        assert app.screen is settings and len(app.screen_stack) == 2
        assert app.notices == before  # type: ignore[attr-defined]
        assert not app.chat.has_class("-sidebar-closed")
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert "New conversation" not in titles and "Settings" not in titles
        await pilot.press("escape")
        assert app.screen is app.chat
        await pilot.press("ctrl+l")
        assert any("no reply to copy" in message for _, _, message in app.notices)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_the_ui_reads_its_own_store_and_the_runtimes_stays_on_the_llama_thread(
    make_app: Callable[..., EdgechatApp],
) -> None:
    app = make_app(max_tokens=8)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        rt, ui_store = app.runtime, app.store
        assert rt is not None and ui_store is not None and ui_store is not rt.store
        used_on: set[str] = set()
        rows, transaction = rt.store._rows, rt.store.transaction

        def recorded_rows(*args: Any) -> Any:
            used_on.add(threading.current_thread().name)
            return rows(*args)

        def recorded_transaction() -> Any:
            used_on.add(threading.current_thread().name)
            return transaction()

        rt.store._rows = recorded_rows  # type: ignore[method-assign]
        rt.store.transaction = recorded_transaction  # type: ignore[method-assign]
        await send(pilot, app, "Hello.")  # a new conversation, a turn, the sidebar and the ids after it
        first = app.chat.conversation_id
        await pilot.press("ctrl+s")
        app.screen.query_one("#system_prompt", TextArea).text = "Answer in one word."
        await pilot.click("#save")  # a settings write
        await pilot.press("ctrl+n")
        options = app.chat.sidebar.query_one(OptionList)
        options.focus()
        options.highlighted = options.get_option_index(first)
        await pilot.press("enter")  # opening a conversation reads its messages
        assert app.chat.conversation_id == first and len(app.chat.chat_log.message_views()) == 2
        assert used_on == {"edgechat-llama"}, "the runtime's connection is the llama thread's alone"
    with pytest.raises(sqlite3.ProgrammingError):
        ui_store.conversations()  # the UI's connection closed with the app


@pytest.mark.asyncio
async def test_the_command_palette_lists_and_runs_the_actions(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(autoload=False)
    async with app.run_test(size=WIDE) as pilot:
        titles = {command.title for command in app.get_system_commands(app.screen)}
        for action in ("New conversation", "Rename conversation", "Delete conversation", "Choose model", "Settings",
                       "Show compacted history", "Copy last reply", "Stop reply", "Toggle sidebar"):  # fmt: skip
            assert action in titles
        await pilot.press("ctrl+p")
        await pilot.press(*"settings")
        await pilot.pause(0.3)  # the palette searches asynchronously
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), timeout=10)


@pytest.mark.asyncio
async def test_a_long_load_shows_how_long_it_has_taken(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(autoload=False)
    async with app.run_test(size=WIDE) as pilot:
        since = time.perf_counter() - 3.2
        app.chat.status.update(activity="loading qwen3-4b…", activity_since=since)
        await pilot.pause()
        shown = re.search(r"loading qwen3-4b… (\d+) s", status_text(app))
        # The seconds since the load began (a slow machine's pause may add one).
        assert shown is not None and 3 <= int(shown.group(1)) <= round(time.perf_counter() - since)
        app.chat.status.update(activity="generating…")  # a streaming reply moves by itself
        await pilot.pause()
        assert "generating…" in status_text(app) and "generating… 3" not in status_text(app)


@pytest.mark.asyncio
async def test_while_a_reply_streams_the_ui_refuses_what_would_disturb_it(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(max_tokens=300)
    async with app.run_test(size=WIDE) as pilot:
        await start_long_reply(pilot, app)
        cid = app.chat.conversation_id
        for key in ("ctrl+n", "ctrl+s", "ctrl+o", "ctrl+d"):
            # Straight to the app: pilot.press waits for the CPU to go idle, which it does not while decoding.
            app.post_message(events.Key(key, None))
            await asyncio.sleep(0.05)
        assert app.chat.conversation_id == cid and app.chat.turn is not None and app.screen is app.chat
        assert any(title == "a reply is streaming" for _, title, _ in app.notices)  # type: ignore[attr-defined]
        await pilot.press("escape")
        await until(pilot, lambda: app.chat.turn is None)
        assert [m.role for m in stored(app)] == ["user", "assistant"]


@pytest.mark.asyncio
async def test_a_message_sent_while_a_picked_model_loads_is_answered_by_that_model(
    make_app: Callable[..., EdgechatApp], smollm2: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-smol.gguf"
    try:
        os.link(smollm2, other)
    except OSError:
        shutil.copyfile(smollm2, other)
    app = make_app(max_tokens=8, explicit=False)  # with -m, every turn would use that model anyway
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        await pilot.press("ctrl+o")
        picker = app.screen
        assert isinstance(picker, ModelPicker)
        picker.query_one("#path", Input).value = str(other)
        picker.action_use()  # Enter in the path box; pilot.press would wait for the load to end
        await asyncio.sleep(0.05)
        assert app.chat.loading_model, "the message must go out while the new model is still loading"
        done = app.chat.last_stats
        app.chat.prompt.text = "Hi!"
        app.chat.prompt.post_message(events.Key("enter", "\r"))
        await until(pilot, lambda: app.chat.turn is None and app.chat.last_stats is not done)
        assert stored_record(app).model == str(other)
        assert app.chat.last_stats is not None and app.chat.last_stats.model == other.stem


@pytest.mark.asyncio
async def test_a_conversations_engine_settings_stay_with_it(make_app: Callable[..., EdgechatApp]) -> None:
    app = make_app(max_tokens=8, ctx=1024)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        await send(pilot, app, "Hello.")
        small = app.chat.conversation_id
        await pilot.press("ctrl+s")
        app.screen.query_one("#ctx", Input).value = "512"
        await pilot.click("#save")
        await until(pilot, lambda: app.chat.model_ready and app.runtime is not None and app.runtime.options.ctx == 512)
        await pilot.press("ctrl+n")  # a new conversation starts from the start-up settings again
        await until(pilot, lambda: app.chat.model_ready and app.runtime is not None and app.runtime.options.ctx == 1024)
        await send(pilot, app, "Hi.")
        assert app.chat.last_stats is not None and app.chat.last_stats.context_limit == 1024
        options = app.chat.sidebar.query_one(OptionList)
        options.focus()
        options.highlighted = options.get_option_index(small)
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.model_ready and app.runtime is not None and app.runtime.options.ctx == 512)


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_a_log(tmp_path: Path) -> None:
    from edgechat.tui.app import as_error

    try:
        raise ValueError("bad thing")
    except ValueError as exc:
        error = as_error(exc, tmp_path / "logs" / "chat-errors.log")
    assert error.message == "ValueError: bad thing"
    assert str(tmp_path / "logs" / "chat-errors.log") in error.hint
    log = (tmp_path / "logs" / "chat-errors.log").read_text()
    assert "Traceback" in log and 'raise ValueError("bad thing")' in log


@pytest.mark.asyncio
async def test_shutting_down_mid_reply_stops_it_stores_it_and_closes_the_runtime(
    make_app: Callable[..., EdgechatApp],
) -> None:
    app = make_app(max_tokens=300)
    async with app.run_test(size=WIDE) as pilot:
        await start_long_reply(pilot, app)
        cid = app.chat.conversation_id
        rt = app.runtime
    # The UI is gone with the reply still streaming; `edgechat chat` shuts down like this.
    t0 = time.perf_counter()
    assert app.shut_down(timeout=30)
    assert time.perf_counter() - t0 < 10, "the reply stops at its next token"
    assert rt is not None and rt.engine is None
    with Runtime(model="unused", home=rt.paths.data_dir) as check:
        assert cid is not None and check.conversation(cid).messages()[-1].partial


@pytest.mark.asyncio
async def test_an_interrupted_reply_offers_a_one_key_retry_and_the_last_message_can_be_edited(
    make_app: Callable[..., EdgechatApp], home: Path, smollm2: Path
) -> None:
    from edgechat.store import NewMessage

    # What a process killed mid-reply leaves behind: the message, and the reply up to its last write.
    rt = Runtime(model=str(smollm2), home=home, ctx=1024, threads=2)
    cid = rt.new_conversation(title="Cut off").id
    rows = rt.store.begin_turn(cid, NewMessage("user", "Name a colour."))
    rt.store.write_reply(rows.reply_id, "Blu", 1)
    rt.close()
    app = make_app(max_tokens=8, conversation=cid)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.chat.model_ready)
        reply = app.chat.chat_log.message_views()[-1]
        assert reply.border_subtitle == "interrupted · partial · ctrl+t retries"
        done = app.chat.last_stats
        await pilot.press("ctrl+t")
        await until(pilot, lambda: app.chat.turn is None and app.chat.last_stats is not done)
        msgs = stored(app)
        assert [(m.role, m.replaced) for m in msgs] == [("user", False), ("assistant", True), ("assistant", False)]
        assert msgs[1].content == "Blu" and msgs[1].reason == "interrupted"
        assert not msgs[2].partial and msgs[2].content
        views = app.chat.chat_log.message_views()
        assert [v.role for v in views] == ["user", "assistant"] and views[-1].text == msgs[2].content
        # Up in the empty box takes the last message back; Enter sends the edited one in its place.
        app.chat.prompt.focus()
        await pilot.press("up")
        assert app.chat.prompt.text == "Name a colour."
        app.chat.prompt.text = "Name a fruit."
        await pilot.pause()
        await send(pilot, app, "Name a fruit.")
        live = [(m.role, m.content) for m in stored(app) if not m.replaced]
        assert live[0] == ("user", "Name a fruit.") and [r for r, _ in live] == ["user", "assistant"]
        assert [v.text for v in app.chat.chat_log.message_views()][0] == "Name a fruit."
