"""Small modal questions: a new title, and whether a conversation really goes."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label


class RenameDialog(ModalScreen[str | None]):
    """Ask for a conversation title; dismisses with the new title, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str) -> None:
        super().__init__(classes="dialog")
        self.current = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box") as box:
            box.border_title = "Rename conversation"
            yield Input(self.current, id="title", select_on_focus=True)
            with Horizontal(classes="buttons"):
                yield Button("Rename", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")
        yield Footer(compact=True)

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        title = self.query_one("#title", Input).value.strip()
        self.dismiss(title or None)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDelete(ModalScreen[bool]):
    """Deleting removes the transcript and its saved KV state: ask first."""

    BINDINGS = [
        Binding("escape,n", "cancel", "Keep"),
        Binding("y", "delete", "Delete"),
    ]

    def __init__(self, title: str) -> None:
        super().__init__(classes="dialog")
        self.conversation_title = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box -danger") as box:
            box.border_title = "Delete conversation"
            yield Label(f"Delete “{self.conversation_title}”?", markup=False)
            yield Label("Its messages and saved KV state are removed for good.", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Delete", variant="error", id="delete")
                yield Button("Keep", id="keep")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    @on(Button.Pressed, "#delete")
    def action_delete(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#keep")
    def action_cancel(self) -> None:
        self.dismiss(False)
