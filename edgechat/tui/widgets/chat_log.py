"""The conversation as the user reads it: messages, compaction notices, and the reply being streamed."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Collapsible, Markdown, Static

from ..figures import first_line

if TYPE_CHECKING:
    from ...store import Message as StoredMessage

# One redraw of a streaming reply (Markdown append, two layout passes, a repaint of the
# scrolling log) costs 10-30 ms of main-thread CPU on a small machine, and that CPU comes out
# of the decode even when llama.cpp leaves a logical CPU free (it is a hyperthread of a busy
# core). So redraws are spaced to keep the UI under UI_CPU_SHARE of the wall time: a fast
# machine redraws several times a second, a slow 2-core box about once a second
# (scripts/bench_tui.py: UI decode cost +7-10 % at 4 redraws/s there, under 5 % like this).
FLUSH_MIN_S = 0.1
FLUSH_MAX_S = 1.5
UI_CPU_SHARE = 0.02
WELCOME = (
    "New conversation. Type below: Enter sends, Shift+Enter or Ctrl+J adds a line, Esc stops a reply.\n"
    "Ctrl+O picks the model, Ctrl+S opens settings, Ctrl+B shows conversations, Ctrl+P lists every command."
)


class MessageView(Vertical):
    """One message. An assistant reply is Markdown and can be fed text from a worker thread."""

    class Flush(Message, bubble=False):
        """Text is waiting in the buffer (posted from the generating thread)."""

    def __init__(
        self,
        role: str,
        text: str = "",
        *,
        label: str = "",
        message_id: int | None = None,
        partial: bool = False,
        compacted: bool = False,
        streaming: bool = False,
        reason: str | None = None,
    ) -> None:
        classes = f"-{role}" + (" -partial" if partial else "") + (" -compacted" if compacted else "")
        super().__init__(classes=classes)
        self.role = role
        self.text = text
        self.label = label or ("you" if role == "user" else role)
        self.message_id = message_id
        self.partial = partial
        self.reason = reason  # why a partial reply is partial: "interrupted", "stopped", "error"
        self.compacted = compacted
        self.streaming = streaming
        self.first_paint: float | None = None  # perf_counter when streamed text first reached the screen
        self.flushes = 0  # batches of streamed text drawn so far
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake_posted = False
        self._last_flush = 0.0
        self._last_cpu = 0.0
        self._interval = FLUSH_MIN_S
        self._flush_timer_set = False

    def compose(self) -> ComposeResult:
        body = self._body()
        if self.compacted:
            with Collapsible(title=f"{self.label} · compacted · {first_line(self.text, 50)}", collapsed=True):
                yield body
        else:
            yield body

    def _body(self) -> Static | Markdown:
        if self.role == "assistant":
            return Markdown(self.text, classes="body")
        return Static(self.text, markup=False, classes="body")

    def on_mount(self) -> None:
        self._set_titles()

    def _set_titles(self) -> None:
        if self.compacted:
            self.border_title = None
            self.border_subtitle = None
            return
        self.border_title = self.label
        if self.streaming and not self.text and not self._pending:
            self.border_subtitle = "thinking…"
        elif self.partial and self.reason in ("interrupted", "error"):
            what = "interrupted" if self.reason == "interrupted" else "failed"
            self.border_subtitle = f"{what} · partial · ctrl+t retries" if self.text else f"{what} · ctrl+t retries"
        elif self.partial:
            self.border_subtitle = "stopped · partial"
        elif not self.streaming and "-length" in self.classes:
            self.border_subtitle = "cut at max tokens"
        elif not self.streaming:
            self.border_subtitle = None

    # streaming ---------------------------------------------------------------------------

    def feed(self, piece: str) -> None:
        """Queue text from the generating thread; at most one wake-up message is in flight."""
        with self._lock:
            self._pending.append(piece)
            if self._wake_posted:
                return
            self._wake_posted = True
        self.post_message(self.Flush())

    async def on_message_view_flush(self, _event: Flush) -> None:
        wait = self._last_flush + self._interval - time.perf_counter()
        if wait > 0:
            if not self._flush_timer_set:
                self._flush_timer_set = True
                self.set_timer(wait, self._flush)
            return
        await self._flush()

    async def _flush(self) -> None:
        self._flush_timer_set = False
        with self._lock:
            text = "".join(self._pending)
            self._pending.clear()
            self._wake_posted = False
        if not text:
            return
        self.text += text
        now, cpu = time.perf_counter(), time.thread_time()
        if self._last_flush:
            # Main-thread CPU since the last flush: this flush's repaint plus anything else the UI did.
            cost = cpu - self._last_cpu
            self._interval = min(FLUSH_MAX_S, max(FLUSH_MIN_S, cost / UI_CPU_SHARE))
        self._last_flush, self._last_cpu = now, cpu
        self.flushes += 1
        if self.streaming and self.border_subtitle == "thinking…":
            self.border_subtitle = "…"
        await self.query_one(".body", Markdown).append(text)
        if self.first_paint is None and self.text.strip():
            self.first_paint = time.perf_counter()

    async def finish(self, *, partial: bool = False, cut: bool = False, subtitle: str | None = None) -> None:
        """The reply is complete (or stopped): show what is left in the buffer and mark it."""
        await self._flush()
        self.streaming = False
        self.partial = partial
        self.set_class(partial, "-partial")
        self.set_class(cut, "-length")
        self._set_titles()
        if subtitle and not partial and not cut:
            self.border_subtitle = subtitle

    def fail(self, reason: str) -> None:
        self.streaming = False
        self.add_class("-error")
        self.border_subtitle = reason

    async def set_compacted(self) -> None:
        if self.compacted:
            return
        self.compacted = True
        self.add_class("-compacted")
        await self.recompose()
        self._set_titles()


class Notice(Static):
    """A line in the log that is not a message: compaction, errors, model changes."""

    def __init__(self, text: str, *, kind: str = "info") -> None:
        super().__init__(text, markup=False, classes=f"notice -{kind}")


class SummaryView(Vertical):
    """A stored compaction summary: what the model now sees instead of the older turns."""

    def __init__(self, text: str, message_id: int | None = None) -> None:
        super().__init__(classes="summary")
        self.text = text
        self.message_id = message_id

    def compose(self) -> ComposeResult:
        with Collapsible(title=f"summary of earlier turns · {first_line(self.text, 50)}", collapsed=True):
            yield Markdown(self.text)


class ChatLog(VerticalScroll):
    """The scrolling message list; it follows the bottom while a reply streams."""

    can_focus = True

    def on_mount(self) -> None:
        self.anchor()

    async def show(self, messages: Sequence[StoredMessage], *, model_label: str = "") -> None:
        """Replace the log with a stored transcript (compacted messages collapsed)."""
        await self.remove_children()
        widgets: list[MessageView | SummaryView | Notice] = []
        for m in messages:
            if m.replaced:  # a regenerated reply or an edited message: stored, out of the conversation
                continue
            if m.kind == "summary":
                widgets.append(SummaryView(m.content, m.id))
                continue
            label = "you" if m.role == "user" else (model_label or m.role)
            widgets.append(
                MessageView(
                    m.role,
                    m.content,
                    label=label,
                    message_id=m.id,
                    partial=m.partial,
                    compacted=m.compacted,
                    reason=m.reason,
                )  # fmt: skip
            )
        if not widgets:
            widgets.append(Notice(WELCOME, kind="welcome"))
        await self.mount_all(widgets)
        self.scroll_end(animate=False)
        self.anchor()

    async def add(self, *widgets: MessageView | Notice | SummaryView, before: MessageView | None = None) -> None:
        """Mount at the bottom (or before a view); one mount for several widgets is one layout pass."""
        welcome = self.query_children(".-welcome")
        if welcome:
            await welcome.remove()
        if before is not None and before.parent is self:
            await self.mount_all(widgets, before=before)
        else:
            await self.mount_all(widgets)
        self.anchor()

    def message_views(self) -> list[MessageView]:
        return list(self.query_children(MessageView).results(MessageView))

    def assign_ids(self, messages: Sequence[StoredMessage]) -> None:
        """Give freshly streamed views their stored ids, so later compaction can find them."""
        views = [v for v in self.message_views() if v.message_id is None]
        stored = [m for m in messages if m.kind == "message" and not m.replaced]
        for view in reversed(views):
            # A reply stopped before its first token is stored empty but not shown: skip such rows.
            while stored and stored[-1].role != view.role:
                stored.pop()
            if not stored:
                break
            view.message_id = stored.pop().id

    async def mark_compacted(self, ids: Sequence[int]) -> int:
        wanted = set(ids)
        count = 0
        for view in self.message_views():
            if view.message_id in wanted:
                await view.set_compacted()
                count += 1
        return count
