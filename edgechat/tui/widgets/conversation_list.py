"""The sidebar: saved conversations, newest first, with search and the verbs that act on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from ..figures import ago, megabytes, model_label, snapshot_mode

if TYPE_CHECKING:
    from ...store import ConversationRecord


def describe(record: ConversationRecord, width: int = 26, state_bytes: int = 0) -> Content:
    """Two lines: the title, then last used · tokens in the context · its saved KV state on disk ·
    model (cut first when narrow)."""
    title = record.title if len(record.title) <= width else record.title[: width - 1] + "…"
    cache = f" · {megabytes(state_bytes)}" if state_bytes and not snapshot_mode() else ""
    meta = f"{ago(record.updated_at)} · {record.token_count} tok{cache} · {model_label(record.model)}"
    if len(meta) > width:
        meta = meta[: width - 1] + "…"
    return Content.assemble((title, "bold"), "\n", (meta, "dim"))


class ConversationList(Vertical):
    """Search box plus the list; posts what the user asked for and lets the app do it."""

    BINDINGS = [
        Binding("n", "new", "New", show=False),
        Binding("r,f2", "rename", "Rename", show=False),
        Binding("delete,d", "delete", "Delete", show=False),
    ]

    class Search(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Opened(Message):
        def __init__(self, conversation_id: str) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class Action(Message):
        """new / rename / delete, for the highlighted conversation (None for new)."""

        def __init__(self, verb: str, conversation_id: str | None) -> None:
            super().__init__()
            self.verb = verb
            self.conversation_id = conversation_id

    def compose(self) -> ComposeResult:
        yield Input(placeholder="Search titles", id="search", compact=True)
        yield OptionList(id="conversations", compact=True)

    def on_mount(self) -> None:
        self.border_title = "Conversations"

    def show(
        self, records: Sequence[ConversationRecord], current: str | None, state_bytes: Mapping[str, int] | None = None
    ) -> None:
        """Refill the list, keeping the open conversation highlighted; `state_bytes`: each one's saved state."""
        options = self.query_one("#conversations", OptionList)
        width = max(12, (self.size.width or 28) - 4)
        sizes = state_bytes or {}
        options.clear_options()
        options.add_options([Option(describe(r, width, sizes.get(r.id, 0)), id=r.id) for r in records])
        if current is not None:
            try:
                options.highlighted = options.get_option_index(current)
            except Exception:  # noqa: BLE001 - the open conversation may be filtered out by the search
                options.highlighted = None
        self.border_subtitle = f"{len(records)}"

    @property
    def highlighted_id(self) -> str | None:
        options = self.query_one("#conversations", OptionList)
        if options.highlighted is None:
            return None
        return options.get_option_at_index(options.highlighted).id

    def focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    @on(Input.Changed, "#search")
    def _search(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Search(event.value))

    @on(Input.Submitted, "#search")
    def _search_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one("#conversations", OptionList).focus()

    @on(OptionList.OptionSelected, "#conversations")
    def _opened(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(self.Opened(event.option.id))

    def action_new(self) -> None:
        self.post_message(self.Action("new", None))

    def action_rename(self) -> None:
        if self.highlighted_id:
            self.post_message(self.Action("rename", self.highlighted_id))

    def action_delete(self) -> None:
        if self.highlighted_id:
            self.post_message(self.Action("delete", self.highlighted_id))
