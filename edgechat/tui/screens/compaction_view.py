"""What compaction took out of the context: the summaries, and the original messages they replaced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, Markdown, Static

if TYPE_CHECKING:
    from ...store import Message


class CompactionView(ModalScreen[None]):
    """Read-only: the transcript keeps every message, so nothing is lost, only out of the model's view."""

    BINDINGS = [Binding("escape,q", "dismiss_view", "Close")]

    def __init__(self, messages: Sequence[Message]) -> None:
        super().__init__(classes="sheet")
        self.summaries = [m for m in messages if m.kind == "summary"]
        self.compacted = [m for m in messages if m.compacted and m.kind == "message"]

    def compose(self) -> ComposeResult:
        with Vertical(classes="sheet-box") as box:
            box.border_title = "Compacted history"
            box.border_subtitle = "esc close"
            with VerticalScroll():
                if not self.summaries and not self.compacted:
                    yield Label("Nothing has been compacted in this conversation yet.", classes="hint")
                for i, s in enumerate(self.summaries, 1):
                    state = "replaced by a newer summary" if s.compacted else "in the context now"
                    yield Label(f"Summary {i} ({state})", classes="section")
                    yield Markdown(s.content, classes="summary-text")
                if self.compacted:
                    yield Label(
                        f"{len(self.compacted)} original messages (kept in the transcript, out of the context)",
                        classes="section",
                    )
                for m in self.compacted:
                    who = "you" if m.role == "user" else m.role
                    item = Static(m.content, markup=False, classes=f"original -{m.role}")
                    item.border_title = who
                    yield item
        yield Footer(compact=True)

    def action_dismiss_view(self) -> None:
        self.dismiss(None)
