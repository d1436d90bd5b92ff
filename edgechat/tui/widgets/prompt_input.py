"""The message box: a TextArea where Enter sends and Shift+Enter (or Ctrl+J) starts a new line."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

# Terminals without the kitty keyboard protocol send Shift+Enter as plain Enter; Ctrl+J
# (a raw line feed, which Textual names "ctrl+j" or "newline") always gets through.
NEWLINE_KEYS = frozenset({"shift+enter", "ctrl+j", "newline", "alt+enter"})


class PromptInput(TextArea):
    """Multi-line input; posts `Submitted` on Enter and leaves clearing to whoever accepts it."""

    class Submitted(Message):
        """The user pressed Enter on a non-empty message."""

        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

        @property
        def control(self) -> PromptInput:
            return self.prompt

    class EditLast(Message):
        """Up in an empty box: the user wants the last message back, to edit and resend it."""

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            placeholder=placeholder,
            compact=True,
            highlight_cursor_line=False,
        )

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self, self.text))
            return
        if event.key == "up" and not self.text:
            event.stop()
            event.prevent_default()
            self.post_message(self.EditLast())
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)
