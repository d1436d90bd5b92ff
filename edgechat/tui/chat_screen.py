"""The chat screen: conversations on the left, the chat in the middle, live figures at the bottom.

It owns the chat's keys and what they do. Its bindings live on the screen, so a dialog pushed
over it (settings, model picker, rename) silences them without any check. Every turn, load,
delete and memory probe runs on the app's `LlamaThread` and comes back as a message (see
`messages.py`); reads and writes of the transcript from here go through the app's own
UI-thread `Store` connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from textual import getters, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from ..config import save_default
from ..errors import EdgechatError
from ..memory import probe
from ..registry import resolve_model
from ..shutdown import StopEvent
from ..threads import ThreadChoice
from .figures import model_label, restore_phrase, snapshot_mode
from .messages import LoadProgress, MemoryProbed, ModelLoaded, TurnEvent, TurnFinished
from .screens.compaction_view import CompactionView
from .screens.dialogs import ConfirmDelete, RenameDialog
from .screens.model_picker import ModelPicker
from .screens.settings import SettingsResult, SettingsScreen, SettingsValues
from .widgets.chat_log import ChatLog, MessageView, Notice
from .widgets.conversation_list import ConversationList
from .widgets.prompt_input import PromptInput
from .widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from ..session import Reply, Runtime, TurnStats
    from ..store import ConversationRecord, Store
    from .app import EdgechatApp

ENGINE_ATTRS = ("ctx", "type_k", "type_v", "gpu_layers", "budget_mb")  # options a reload may change
MEMORY_PROBE_S = 2.0


@dataclass
class ActiveTurn:
    """A reply being generated: what the llama thread needs and what the UI shows for it."""

    conversation_id: str
    text: str
    user_view: MessageView
    view: MessageView
    fresh: bool  # first turn since the conversation was opened: show where its KV came from
    regenerate: bool = False  # answer the last message again (with `text`: the edited last message)
    stop: StopEvent = field(default_factory=StopEvent)
    stored: bool = False  # the pipeline has committed the message: it stays, whatever happens next
    started: float = field(default_factory=time.perf_counter)
    restored: dict[str, Any] = field(default_factory=dict)


class ChatScreen(Screen[None]):
    """The chat: its widgets, keys, conversations, turns and model loads.

    `conversation` opens that conversation first, `cont` the latest one; `autoload` loads the
    model at start and whenever a conversation needs other engine settings.
    """

    AUTO_FOCUS = "#prompt"
    BINDINGS = [
        Binding("escape", "stop_reply", "Stop"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("ctrl+o", "pick_model", "Model"),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("ctrl+l", "copy_reply", "Copy reply"),
        Binding("ctrl+t", "regenerate", "Retry"),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar"),
        Binding("ctrl+g", "show_compaction", "Compacted", show=False),
        Binding("ctrl+r", "rename", "Rename", show=False),
        Binding("ctrl+f", "focus_search", "Search", show=False),
    ]

    if TYPE_CHECKING:
        app = getters.app(EdgechatApp)  # the base's own typing trick: `self.app` is this app

    def __init__(self, *, conversation: str | None = None, cont: bool = False, autoload: bool = True) -> None:
        super().__init__()
        self.initial_conversation = conversation
        self.cont = cont
        self.autoload = autoload
        self.conversation_id: str | None = None
        self.turn: ActiveTurn | None = None
        self.loading_model = False
        self.model_ready = False
        self.last_reply = ""
        self.last_stats: TurnStats | None = None
        self._loads_pending = 0
        self._loading_spec: str | None = None  # the model a queued load will bring: new conversations get it
        self._probe_pending = False
        # What a conversation without engine settings of its own runs with: the command line's
        # and config.toml's choices, not those of the conversation opened before it.
        self._base_engine: dict[str, Any] = {}
        self._pending_settings: dict[str, Any] = {}
        self._fresh = False
        self._search = ""
        self._when_idle: list[Callable[[], Any]] = []
        self._exit_after_turn = False
        self._editing = False  # the prompt holds the last message, taken back to be edited and resent
        self.sidebar = ConversationList(id="sidebar")
        self.chat_log = ChatLog(id="chat-log")
        self.prompt = PromptInput(id="prompt", placeholder="Message · Enter sends · Shift+Enter or Ctrl+J: new line")
        self.status = StatusBar(id="status")

    @property
    def runtime(self) -> Runtime | None:
        """The app's runtime; a reload replaces it (on the llama thread)."""
        return self.app.runtime

    @property
    def store(self) -> Store:
        """The UI thread's own transcript connection (the runtime's belongs to the llama thread)."""
        store = self.app.store
        assert store is not None, "the store opens with the runtime"
        return store

    # layout and start-up --------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield self.sidebar
            with Vertical(id="main"):
                yield self.chat_log
                yield self.prompt
        yield self.status
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        rt = self.runtime
        if rt is None:  # the app showed why
            self.status.update(activity="", model="no runtime")
            await self.chat_log.show([])
            return
        self._base_engine = {key: getattr(rt.options, key) for key in ENGINE_ATTRS}
        self.status.update(model=model_label(rt.model_spec), kv_type=rt.kv_type)
        await self._open_initial()
        if self.autoload and not self.loading_model:
            record = self.store.conversation(self.conversation_id) if self.conversation_id else None
            self.load_model(spec=record.model if record and not rt.explicit_model else None)
        if not snapshot_mode():
            self.set_interval(MEMORY_PROBE_S, self.probe_memory)
            self.probe_memory()

    async def _open_initial(self) -> None:
        cid = self.initial_conversation
        try:
            if cid is None and self.cont:
                latest = self.store.latest()
                if latest is None:
                    self.notify("there is no saved conversation yet; this is a new one", title="nothing to continue")
                cid = latest.id if latest else None
            if cid is not None:
                await self.open_conversation(cid)
                return
        except EdgechatError as exc:
            self.app.show_error(exc)
        await self.start_new_conversation()

    # conversations --------------------------------------------------------------------------

    def refresh_sidebar(self) -> None:
        if self.runtime is None:
            return
        try:
            records = self.store.conversations(self._search)
        except EdgechatError as exc:
            self.app.show_error(exc)
            return
        self.sidebar.show(records, self.conversation_id, self.runtime.cache.disk_usage())

    async def open_conversation(self, cid: str) -> None:
        """Show a stored conversation; its KV state is restored lazily, on the next turn."""
        record = self.store.conversation(cid)
        messages = self.store.messages(record.id)
        self.conversation_id = record.id
        self._pending_settings = {}
        self._editing = False
        self._fresh = bool(messages)
        self.last_reply = next((m.content for m in reversed(messages) if m.role == "assistant"), "")
        await self.chat_log.show(messages, model_label=model_label(record.model))
        self.status.update(ctx_used=record.token_count, restore="", ttft_s=None, tokens_per_s=None)
        self.refresh_sidebar()
        self._apply_conversation_engine(record.settings, record.model)

    async def start_new_conversation(self) -> None:
        """A blank chat; it is stored only when the first message is sent."""
        self.conversation_id = None
        self._pending_settings = {}
        self._editing = False
        self._fresh = False
        self.last_reply = ""
        await self.chat_log.show([])
        self.status.update(ctx_used=0, restore="", ttft_s=None, tokens_per_s=None)
        self.refresh_sidebar()
        rt = self.runtime
        if rt is not None and self.autoload and self._base_engine:
            wanted = _engine_overrides(rt, {}, self._base_engine)  # not the last conversation's own settings
            if wanted:
                self.load_model(overrides=wanted)

    def _apply_conversation_engine(self, settings: dict[str, Any], model: str) -> None:
        """A conversation may carry its own engine settings or model: load them before its next turn."""
        rt = self.runtime
        if rt is None or not self.autoload:
            return
        if rt.explicit_model:  # `chat -m NAME` beats the model a conversation was started with
            model = rt.model_spec
        wanted = _engine_overrides(rt, settings, self._base_engine)
        if wanted:
            self.load_model(spec=model, overrides=wanted)
        elif rt.loaded and model not in (rt.model_spec, rt.model_name):
            self.load_model(spec=model)

    @on(ConversationList.Opened)
    async def _sidebar_open(self, message: ConversationList.Opened) -> None:
        if message.conversation_id == self.conversation_id:
            self.prompt.focus()
            return
        if self._busy("switch conversations"):
            return
        try:
            await self.open_conversation(message.conversation_id)
        except EdgechatError as exc:
            self.app.show_error(exc)
        if self.has_class("-narrow"):
            self.remove_class("-sidebar-open")  # on 80 columns the chat needs the room back
        self.prompt.focus()

    @on(ConversationList.Search)
    def _sidebar_search(self, message: ConversationList.Search) -> None:
        self._search = message.text
        self.refresh_sidebar()

    @on(ConversationList.Action)
    async def _sidebar_action(self, message: ConversationList.Action) -> None:
        if message.verb == "new":
            await self.action_new_conversation()
        elif message.verb == "rename":
            self._rename(message.conversation_id)
        elif message.verb == "delete":
            self._delete(message.conversation_id)

    def _busy(self, what: str) -> bool:
        if self.turn is None:
            return False
        self.notify(f"press Esc to stop the reply, then {what}", title="a reply is streaming", severity="warning")
        return True

    def _idle(self, fn: Callable[[], Any]) -> None:
        """Run a store write now, or after the streaming turn, which may still title the conversation
        from its first message: the user's choice lands last."""
        if self.turn is None:
            fn()
        else:
            self._when_idle.append(fn)

    def _record(self, cid: str | None) -> ConversationRecord | None:
        """The stored conversation, or None with a notification (e.g. deleted from the CLI meanwhile)."""
        if self.runtime is None or cid is None:
            return None
        try:
            return self.store.conversation(cid)
        except EdgechatError as exc:
            self.app.show_error(exc)
            self.refresh_sidebar()
            return None

    def _rename(self, cid: str | None) -> None:
        if cid is None:
            self.notify("send a message first: a new conversation is saved with its first turn")
            return
        record = self._record(cid)
        if record is None:
            return

        def done(title: str | None) -> None:
            if not title:
                return

            def rename() -> None:
                if self.runtime is None:
                    return
                try:
                    self.store.rename(record.id, title)
                except EdgechatError as exc:
                    self.app.show_error(exc)
                self.refresh_sidebar()

            self._idle(rename)

        self.app.push_screen(RenameDialog(record.title), done)

    def _delete(self, cid: str | None) -> None:
        if self._busy("delete"):
            return
        record = self._record(cid)
        if record is None:
            return

        def done(confirmed: bool | None) -> None:
            rt = self.runtime
            if not confirmed or rt is None:
                return

            async def deleted(_result: object, error: EdgechatError | None) -> None:
                if error is not None:
                    self.app.show_error(error)
                    return
                self.notify(f"deleted “{record.title}”")
                if record.id == self.conversation_id:
                    await self.start_new_conversation()
                else:
                    self.refresh_sidebar()

            # On the llama thread: a delete waits for another process's turn on that conversation,
            # and it drops the conversation's KV state from the RAM cache that thread uses.
            self.app.on_llama_thread(lambda: rt.delete_conversation(record.id), deleted)

        self.app.push_screen(ConfirmDelete(record.title), done)

    # sending --------------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    async def _submitted(self, message: PromptInput.Submitted) -> None:
        await self.send(message.text)

    @on(PromptInput.Changed)
    def _prompt_changed(self, event: PromptInput.Changed) -> None:
        if not event.text_area.text:
            self._editing = False  # clearing the box cancels an edit

    @on(PromptInput.EditLast)
    def _edit_last(self, _message: PromptInput.EditLast) -> None:
        self.action_edit_last()

    async def send(self, text: str) -> ActiveTurn | None:
        """Start a turn: show the message at once, generate on the llama thread, stream into the log."""
        rt = self.runtime
        if rt is None:
            self.app.show_error(EdgechatError("no runtime", "fix the error shown at start-up and restart edgechat"))
            return None
        if self._busy("send the next message"):
            return None
        if self.conversation_id is None:
            try:
                spec, settings = rt.conversation_defaults(
                    model=self._loading_spec or rt.model_spec, settings=self._pending_settings
                )
                self.conversation_id = self.store.create_conversation(spec, settings).id
            except EdgechatError as exc:
                self.app.show_error(exc)
                return None
            self._pending_settings = {}
        editing = self._editing
        self._editing = False
        if editing:  # the edited message replaces the last one, and its reply (both stay stored)
            for old in self._last_turn_views():
                await old.remove()
        user_view = MessageView("user", text)
        view = MessageView("assistant", label=model_label(rt.model_name or rt.model_spec), streaming=True)
        turn = ActiveTurn(self.conversation_id, text, user_view, view, fresh=self._fresh, regenerate=editing)
        self.prompt.clear()
        # Mount first, then generate: the reply cannot be drawn before its view exists anyway,
        # and mounting (tens of ms of main-thread CPU) would otherwise compete with the decode
        # for the cores (scripts/bench_tui.py).
        await self._start_turn(turn, user_view, view)
        return turn

    async def _start_turn(self, turn: ActiveTurn, *views: MessageView) -> None:
        rt = self.runtime
        assert rt is not None
        self._fresh = False
        self.turn = turn
        self.status.update(
            activity="loading model…" if self.loading_model or not rt.loaded else "thinking…",
            activity_since=time.perf_counter(),
        )
        await self.chat_log.add(*views)
        self.chat_log.scroll_end(animate=False)
        self.refresh_bindings()
        self.prompt.cursor_blink = False  # each blink is a repaint, and every repaint slows the decode
        self.app.llama.submit(partial(self._generate, turn))

    def _last_turn_views(self) -> list[MessageView]:
        """The views of the last exchange: the last user message and any reply after it."""
        views = [v for v in self.chat_log.message_views() if not v.compacted]
        for i in range(len(views) - 1, -1, -1):
            if views[i].role == "user":
                return views[i:]
        return []

    def _generate(self, turn: ActiveTurn) -> None:
        """On the llama thread: run the turn pipeline; pieces go to the view's buffer, the rest by message."""
        rt = self.runtime
        assert rt is not None
        try:
            conv = rt.conversation(turn.conversation_id)
            if turn.regenerate:
                stream = conv.regenerate(turn.text or None, stop=turn.stop)
            else:
                stream = conv.stream(turn.text, stop=turn.stop)

            def on_event(kind: str, data: Any) -> None:
                if kind == "stored":
                    turn.stored = True
                self.post_message(TurnEvent(turn, kind, data))

            stream.on_event = on_event
            first = True
            for piece in stream:
                turn.view.feed(piece)
                if first:
                    first = False
                    self.post_message(TurnEvent(turn, "first_token", None))
            kv = rt.kv_bytes()
            self.post_message(TurnFinished(turn, stream.reply, kv, None))
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a notification
            self.post_message(TurnFinished(turn, None, 0, self.app.as_error(exc)))

    @on(TurnEvent)
    async def _turn_event(self, message: TurnEvent) -> None:
        turn = message.turn
        if message.kind == "restored":
            turn.restored = dict(message.data)
            if not turn.stop.is_set():
                self.status.update(activity="thinking…")
        elif message.kind == "first_token":
            if not turn.stop.is_set():
                self.status.update(activity="generating…")
        elif message.kind == "compacted":
            await self.chat_log.add(Notice(_compaction_text(message.data), kind="compaction"), before=turn.user_view)

    @on(TurnFinished)
    async def _turn_finished(self, message: TurnFinished) -> None:
        turn = message.turn
        self.status.update(activity="")
        if message.error is not None and turn.stored:
            # The message is stored (so is what came of the reply): offer the one-key retry.
            await turn.view.finish()
            turn.view.fail("failed · ctrl+t retries")
            self._assign_ids(turn)
            self.app.show_error(message.error)
        elif message.error is not None:
            await turn.view.finish()
            if turn.view.text:
                turn.view.fail("not saved")  # unlike a stopped reply, nothing of this turn was stored
                turn.view.message_id = -1
            else:
                await turn.view.remove()
            turn.user_view.message_id = -1  # not stored: keep it out of id matching
            turn.user_view.add_class("-error")
            turn.user_view.border_subtitle = "not sent"
            if not self.prompt.text.strip():
                self.prompt.text = turn.text  # nothing typed since: give the message back to edit or resend
            self.app.show_error(message.error)
        else:
            assert message.reply is not None
            self.last_stats = message.reply.stats
            await self._show_reply(turn, message.reply, message.kv_bytes)
        self.turn = None  # only now: until here the finished reply was still being drawn
        self.prompt.cursor_blink = not snapshot_mode()
        self.refresh_bindings()
        for fn in self._when_idle:
            fn()
        self._when_idle.clear()
        if self._exit_after_turn:
            self.app.exit()

    async def _show_reply(self, turn: ActiveTurn, reply: Reply, kv_bytes: int) -> None:
        st = reply.stats
        stopped = st.finish_reason == "cancelled"
        rt = self.runtime
        if stopped and not reply.text and turn.regenerate and rt is not None and not turn.text:
            # A regenerate stopped before its first token changes nothing: show the kept reply again.
            with contextlib.suppress(EdgechatError):
                messages = self.store.messages(turn.conversation_id)
                await self.chat_log.show(messages, model_label=model_label(rt.model_spec))
        elif stopped and not reply.text:
            await turn.view.remove()
            await self.chat_log.add(Notice("stopped before the first token", kind="info"))
        else:
            subtitle = (
                f"{st.completion_tokens} tok · {st.decode_tokens_per_s:.0f} tok/s" if not snapshot_mode() else None
            )
            if st.finish_reason == "repetition":  # the loop guard ended it: say why the reply stops short
                subtitle = "stopped: it kept repeating itself" + (f" · {subtitle}" if subtitle else "")
            await turn.view.finish(partial=stopped, cut=st.finish_reason == "length", subtitle=subtitle)
            self.last_reply = reply.text
        self._assign_ids(turn)
        if reply.compaction is not None:
            await self.chat_log.mark_compacted(reply.compaction.compacted_ids)
        source = turn.restored.get("source", st.restored_from)
        saved = (st.reused_tokens, st.prefill_saved_s)
        phrase = restore_phrase(source, st.restore_s, st.ttft_s, *saved) if turn.fresh else ""
        self.status.update(
            ctx_used=st.context_tokens, ctx_limit=st.context_limit, kv_bytes=kv_bytes, kv_type=st.kv_type,
            ttft_s=st.ttft_s, tokens_per_s=st.decode_tokens_per_s or None, restore=phrase,
            model=model_label(st.model) or self.status.figures.model,
            threads=ThreadChoice(st.decode_threads, st.prefill_threads, st.threads_auto).label() if st.decode_threads else "",
        )  # fmt: skip
        self.refresh_sidebar()

    def _assign_ids(self, turn: ActiveTurn) -> None:
        if self.runtime is not None and self.conversation_id == turn.conversation_id:
            with contextlib.suppress(EdgechatError):
                self.chat_log.assign_ids(self.store.messages(turn.conversation_id))

    def stop_for_exit(self, reason: str = "stopped", activity: str | None = None) -> bool:
        """Quitting: stop a streaming reply (stored as partial with `reason`) and exit once it is
        stored, saying `activity` meanwhile. False when no reply streams: the app may exit now."""
        turn = self.turn
        if turn is None:
            return False
        turn.stop.reason = reason
        turn.stop.set()
        self._exit_after_turn = True
        if activity is not None:
            self.status.update(activity=activity)
        return True

    # model loading --------------------------------------------------------------------------

    def load_model(self, spec: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        """Load (or reload with new engine settings) on the llama thread; a turn sent meanwhile waits for it."""
        rt = self.runtime
        if rt is None:
            return
        self.loading_model = True
        self.model_ready = False
        self._loads_pending += 1
        self._loading_spec = spec or self._loading_spec or rt.model_spec
        name = model_label(self._loading_spec)
        self.status.update(activity=f"loading {name}…", activity_since=time.perf_counter())
        self.app.llama.submit(partial(self._load_now, spec, overrides))

    def _load_now(self, spec: str | None, overrides: dict[str, Any] | None) -> None:
        """On the llama thread: rebuild the runtime if engine settings changed, fetch the model, load it."""
        t0 = time.perf_counter()
        try:
            if overrides is not None:
                old = self.runtime
                assert old is not None
                fresh = old.with_options(**overrides)
                fresh.model_spec = spec or old.model_spec
                # Free its memory before the new context is allocated. Nothing on the UI thread
                # reads its store (the UI has its own), so it closes here, at once.
                old.close()
                self.app.runtime = fresh  # a turn queued behind this load must see the new runtime
            rt = self.runtime
            assert rt is not None
            self._fetch_model(rt, spec or rt.model_spec)
            kv = rt.load(spec).kv_bytes()
        except BaseException as exc:  # noqa: BLE001 - shown as a notification
            self.post_message(ModelLoaded(time.perf_counter() - t0, 0, self.app.as_error(exc)))
            return
        self.post_message(ModelLoaded(time.perf_counter() - t0, kv, None))

    def _fetch_model(self, rt: Runtime, spec: str) -> None:
        """Download a registry model before loading it, so the status bar can show the progress."""
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            if self.app.llama.closing:
                raise EdgechatError("download stopped on quit", "it resumes where it left off next time")
            now = time.perf_counter()
            if now - last[0] >= 0.2 or (total and done >= total):
                last[0] = now
                self.post_message(LoadProgress(spec, done, total))

        resolve_model(spec, rt.paths, download=rt.download, progress=progress)

    @on(LoadProgress)
    def _load_progress(self, message: LoadProgress) -> None:
        got = f"{message.done / 2**20:.0f}" + (f"/{message.total / 2**20:.0f} MB" if message.total else " MB")
        share = f" {message.done * 100 // message.total}%" if message.total else ""
        self.status.update(activity=f"downloading {model_label(message.spec)}{share} ({got})")

    @on(ModelLoaded)
    def _model_loaded(self, message: ModelLoaded) -> None:
        self._loads_pending -= 1
        if self._loads_pending:
            return  # another load is queued behind this one: its outcome is the one that counts
        self.loading_model = False
        self._loading_spec = None
        if self.turn is None:
            self.status.update(activity="")
        if message.error is not None:
            self.model_ready = False
            exc = message.error
            # Here the way out is a key away, not a command line.
            self.app.show_error(EdgechatError(exc.message, f"{exc.hint}; or press Ctrl+O to pick a model".lstrip("; ")))
            self.status.update(ctx_limit=0, kv_bytes=0)
            return
        self.model_ready = True
        self.status.update(kv_bytes=message.kv_bytes)
        self._model_status()
        if not snapshot_mode():
            self.notify(f"{self.status.figures.model} loaded in {message.seconds:.1f} s", timeout=3)

    def _model_status(self) -> None:
        rt = self.runtime
        if rt is None or not rt.loaded:
            return
        plan = rt.plan
        budget = rt.options.budget_mb or (plan.budget_ram >> 20 if plan is not None else None)
        self.status.update(
            model=model_label(rt.model_name or rt.model_spec), kv_type=rt.kv_type, ctx_limit=rt.context_limit,
            budget_mb=budget, vram_budget_mb=plan.budget_gpu >> 20 if plan is not None and plan.budget_gpu else None,
        )  # fmt: skip

    # memory ---------------------------------------------------------------------------------

    def probe_memory(self) -> None:
        """Every MEMORY_PROBE_S: RAM and GPU memory, read on the llama thread (the GPU side asks ggml).

        Queued behind a streaming reply, a probe lands when the turn ends; the figures hold still
        meanwhile, as llama.cpp allocates nothing during a turn.
        """
        if self._probe_pending or self.app.llama.closing:
            return
        self._probe_pending = True
        if not self.app.llama.submit(self._probe_now):
            self._probe_pending = False

    def _probe_now(self) -> None:
        rt = self.runtime
        try:
            snapshot = probe()
            # Between turns (this thread runs them): re-plan the context when memory got short.
            replan = rt.watch_memory(snapshot) if rt is not None else None
            context = (rt.context_limit, rt.kv_type, rt.kv_bytes()) if replan is not None and rt is not None else None
        except Exception:  # noqa: BLE001 - a failed probe only leaves the figures stale
            return
        finally:
            self._probe_pending = False
        self.post_message(MemoryProbed(snapshot, rt.memory if rt is not None else None, context))

    @on(MemoryProbed)
    def _memory_probed(self, message: MemoryProbed) -> None:
        snap = message.snapshot
        gpus = () if snap.unified else snap.gpus  # Apple's GPU shares the RAM already shown
        local = [g for g in gpus if not g.endpoint]
        self.status.update(
            rss_bytes=snap.process_rss,
            ram_total=snap.ram_total,
            vram_used=sum(g.used for g in local),
            vram_total=sum(g.total for g in local),
            remote=tuple((g.endpoint, g.used, g.total) for g in snap.gpus if g.endpoint),
        )
        if message.reading is not None:
            self.status.update(ram_free=message.reading.ram_free, ram_floor=message.reading.ram_floor)
        if message.context is not None:
            limit, kv_type, kv_bytes = message.context
            self.status.update(ctx_limit=limit, kv_type=kv_type, kv_bytes=kv_bytes)

    # actions --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop_reply":
            return self.turn is not None  # Esc (and its footer entry) only while a reply streams
        return True

    def action_stop_reply(self) -> None:
        """Esc: the engine sees the flag at the next token; the partial reply is stored and marked."""
        if self.turn is not None:
            self.turn.stop.set()
            self.status.update(activity="stopping…")

    async def action_new_conversation(self) -> None:
        if self._busy("start a new conversation"):
            return
        await self.start_new_conversation()
        self.prompt.focus()

    def action_rename(self) -> None:
        self._rename(self.conversation_id)

    def action_delete(self) -> None:
        self._delete(self.conversation_id)

    def action_focus_search(self) -> None:
        self.add_class("-sidebar-open")
        self.remove_class("-sidebar-closed")
        self.sidebar.focus_search()

    def action_toggle_sidebar(self) -> None:
        shown = self.sidebar.display
        self.set_class(shown, "-sidebar-closed")
        self.set_class(not shown, "-sidebar-open")
        if not shown:
            self.sidebar.query_one("#conversations").focus()
        elif self.sidebar.has_focus_within:
            self.prompt.focus()

    def action_copy_reply(self) -> None:
        if not self.last_reply:
            self.notify("there is no reply to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(self.last_reply)
        self.notify(f"copied the last reply ({len(self.last_reply)} characters)", timeout=3)

    def action_show_compaction(self) -> None:
        if self.conversation_id is None or self._record(self.conversation_id) is None:
            self.notify("nothing has been compacted in this conversation")
            return
        self.app.push_screen(CompactionView(self.store.messages(self.conversation_id)))

    async def action_regenerate(self) -> None:
        """Ctrl+T: answer the last message again (also the retry of an interrupted or failed reply).
        The old reply stays stored, marked replaced."""
        rt = self.runtime
        if rt is None or self._busy("regenerate the reply"):
            return
        last = self._last_turn_views()
        if self.conversation_id is None or not last:
            self.notify("there is no message to answer again yet", severity="warning")
            return
        for old in last[1:]:
            await old.remove()
        view = MessageView("assistant", label=model_label(rt.model_name or rt.model_spec), streaming=True)
        turn = ActiveTurn(self.conversation_id, "", last[0], view, fresh=self._fresh, regenerate=True)
        await self._start_turn(turn, view)

    def action_edit_last(self) -> None:
        """Up in an empty prompt: take the last message back to edit; Enter resends it, and the old
        message and its reply stay stored, marked replaced."""
        if self.runtime is None or self._busy("edit the last message"):
            return
        last = self._last_turn_views()
        if self.conversation_id is None or not last:
            return
        self._editing = True
        self.prompt.text = last[0].text
        self.prompt.move_cursor(self.prompt.document.end)
        self.notify("editing your last message: Enter resends it, clearing the box cancels", timeout=4)

    def action_pick_model(self) -> None:
        rt = self.runtime
        if rt is None or self._busy("change the model"):
            return

        def chosen(spec: str | None) -> None:
            if not spec or self.runtime is None:
                return
            if self.conversation_id is not None:
                try:
                    self.store.update(self.conversation_id, model=spec)
                except EdgechatError as exc:
                    self.app.show_error(exc)
            self.load_model(spec=spec)

        self.app.push_screen(ModelPicker(rt.paths, rt.model_spec), chosen)

    def action_settings(self) -> None:
        rt = self.runtime
        if rt is None or self._busy("change settings"):
            return
        record = self._record(self.conversation_id)
        if self.conversation_id is not None and record is None:
            return
        stored = record.settings if record else self._pending_settings
        # What the next reply would use: the model's recommended sampling, config.toml, then the conversation's.
        d = rt.sampling(model=record.model if record and not rt.explicit_model else None, conversation=stored)
        values = SettingsValues(
            system_prompt=str(stored.get("system_prompt", rt.system_prompt) or ""),
            temperature=d.temperature,
            max_tokens=d.max_tokens,
            ctx=rt.options.ctx,
            kv_type=rt.options.type_k or "auto",
            gpu_layers=str(rt.options.gpu_layers if rt.options.gpu_layers is not None else "auto"),
            budget_mb=rt.options.budget_mb,
            compaction=str(stored.get("compaction", rt.compaction)),
        )
        self.app.push_screen(
            SettingsScreen(values, conversation_title=record.title if record else ""),
            lambda result: self._apply_settings(values, result),
        )

    def _apply_settings(self, before: SettingsValues, result: SettingsResult | None) -> None:
        """Store the values on the conversation (and in config.toml); reload if the engine changed."""
        rt = self.runtime
        if result is None or rt is None:
            return
        v = result.values
        chat = {
            "system_prompt": v.system_prompt, "compaction": v.compaction,
            "temperature": v.temperature, "max_tokens": v.max_tokens,
        }  # fmt: skip
        engine_changed = v.engine() != before.engine()
        if engine_changed:
            chat.update(ctx=v.ctx, kv_type=v.kv_type, gpu_layers=v.gpu_layers, budget_mb=v.budget_mb)
        try:
            if self.conversation_id is None:
                self._pending_settings.update(chat)
            else:
                record = self.store.conversation(self.conversation_id)
                self.store.update(record.id, settings={**record.settings, **chat})
            if result.as_default:
                kv_type = None if v.kv_type == "auto" else v.kv_type  # config.toml's automatic is no key
                for key, value in {**chat, "ctx": v.ctx, "kv_type": kv_type, "gpu_layers": v.gpu_layers,
                                   "budget_mb": v.budget_mb}.items():  # fmt: skip
                    save_default(rt.paths, key, value)  # None (automatic) removes the key
                rt.refresh_defaults()
                self._base_engine = _runtime_overrides(v.ctx, v.kv_type, v.gpu_layers, v.budget_mb)
        except EdgechatError as exc:
            self.app.show_error(exc)
            return
        except OSError as exc:
            self.app.show_error(
                EdgechatError(f"could not save the settings: {exc}", "free some disk space and save again")
            )
            return
        self.notify("saved as default and for this conversation" if result.as_default else "saved", timeout=3)
        if engine_changed:
            self.load_model(overrides=_runtime_overrides(v.ctx, v.kv_type, v.gpu_layers, v.budget_mb))

    def commands(self) -> Iterator[tuple[str, str, Callable[[], Any]]]:
        """The chat's entries in the command palette: (title, help, callback)."""
        yield "New conversation", "Start a blank chat (ctrl+n)", self.action_new_conversation
        yield "Rename conversation", "Give the open conversation a title (ctrl+r)", self.action_rename
        yield "Delete conversation", "Remove it with its saved KV state", self.action_delete
        yield "Search conversations", "Filter the sidebar by title (ctrl+f)", self.action_focus_search
        yield "Choose model", "Registry models, downloads, or a local GGUF file (ctrl+o)", self.action_pick_model
        yield "Settings", "System prompt, sampling, context, KV type, budget (ctrl+s)", self.action_settings
        yield "Show compacted history", "Summaries and the messages they replaced (ctrl+g)", self.action_show_compaction
        yield "Copy last reply", "To the clipboard (ctrl+l)", self.action_copy_reply
        yield (
            "Regenerate reply",
            "Answer the last message again; the old reply stays stored (ctrl+t)",
            self.action_regenerate,
        )
        yield (
            "Edit last message",
            "Take it back into the box to edit and resend (up in an empty box)",
            self.action_edit_last,
        )
        yield "Stop reply", "End the streaming reply, keep what came (esc)", self.action_stop_reply
        yield "Toggle sidebar", "Show or hide the conversation list (ctrl+b)", self.action_toggle_sidebar


def _runtime_overrides(ctx: int | None, kv_type: str, gpu_layers: str, budget_mb: int | None) -> dict[str, Any]:
    """Settings-screen values as engine options."""
    kv = None if kv_type == "auto" else kv_type
    return {
        "ctx": ctx,
        "type_k": kv,
        "type_v": kv,
        "gpu_layers": gpu_layers if gpu_layers == "auto" else int(gpu_layers),
        "budget_mb": budget_mb,
    }


def _engine_overrides(rt: Runtime, settings: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The engine settings a conversation needs that the runtime lacks (empty: no reload).

    Its own stored ones, else `base` (the start-up settings).
    """
    if any(k in settings for k in ("ctx", "kv_type", "gpu_layers", "budget_mb")):
        wanted = _runtime_overrides(
            settings.get("ctx"), str(settings.get("kv_type", rt.options.type_k or "auto")),
            str(settings.get("gpu_layers", rt.options.gpu_layers)), settings.get("budget_mb"),
        )  # fmt: skip
    else:
        wanted = dict(base)
    current = {k: getattr(rt.options, k) for k in wanted}
    if str(current["gpu_layers"]) == str(wanted["gpu_layers"]):
        wanted["gpu_layers"] = current["gpu_layers"]
    # What a reload would run with: "automatic" (None) falls back to config.toml, as at start-up.
    would = replace(rt.asked, **wanted).over(rt.defaults)
    return wanted if {k: getattr(would, k) for k in wanted} != current else {}


def _compaction_text(result: Any) -> str:
    n = len(getattr(result, "compacted_ids", ()) or ())
    tokens = f"{result.tokens_before} → {result.tokens_after} tokens"
    if result.policy == "summarize":
        what = f"{n} earlier messages summarized"
    else:
        what = f"{n} earlier messages dropped from the context" + (
            " (KV shift, no re-prefill)" if result.shifted else ""
        )
    return f"⋯ context full: {what} ({tokens}) · ctrl+g shows them"
