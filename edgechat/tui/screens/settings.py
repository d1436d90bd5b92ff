"""Conversation and engine settings: saved on the conversation, or as defaults for every new one."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Select, TextArea

from ...config import COMPACTION_POLICIES, KV_TYPES

# Keys that change what llama.cpp allocates: changing one means reloading the model.
ENGINE_KEYS = ("ctx", "kv_type", "gpu_layers", "budget_mb")


@dataclass(frozen=True)
class SettingsValues:
    """The form's values, typed; None means automatic (the planner decides) or no budget."""

    system_prompt: str
    temperature: float
    max_tokens: int
    ctx: int | None
    kv_type: str  # "auto": the planner picks
    gpu_layers: str
    budget_mb: int | None
    compaction: str

    def engine(self) -> tuple[int | None, str, str, int | None]:
        return (self.ctx, self.kv_type, self.gpu_layers, self.budget_mb)


@dataclass(frozen=True)
class SettingsResult:
    values: SettingsValues
    as_default: bool  # also write them to config.toml for new conversations


class SettingsError(ValueError):
    pass


def _optional_int(text: str, name: str, minimum: int) -> int | None:
    text = text.strip()
    if text in ("", "auto", "none"):
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a whole number (or empty for automatic)") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    return value


class SettingsScreen(ModalScreen[SettingsResult | None]):
    """A form over SettingsValues; engine changes are flagged because they reload the model."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, values: SettingsValues, *, conversation_title: str = "") -> None:
        super().__init__(classes="sheet")
        self.values = values
        self.conversation_title = conversation_title

    def compose(self) -> ComposeResult:
        v = self.values
        with Vertical(classes="sheet-box", id="settings") as box:
            box.border_title = "Settings"
            box.border_subtitle = (
                f"for “{self.conversation_title}”" if self.conversation_title else "for the new conversation"
            )
            yield Label("System prompt", classes="field-label")
            yield TextArea(v.system_prompt, id="system_prompt", compact=True, soft_wrap=True)
            with Grid(classes="form"):
                yield Label("Temperature", classes="field-label")
                yield Input(f"{v.temperature:g}", id="temperature", type="number", compact=True)
                yield Label("Max tokens", classes="field-label")
                yield Input(str(v.max_tokens), id="max_tokens", type="integer", compact=True)
                yield Label("Compaction", classes="field-label")
                yield Select(
                    [(p, p) for p in COMPACTION_POLICIES], value=v.compaction, id="compaction",
                    allow_blank=False, compact=True,
                )  # fmt: skip
                yield Label("Context", classes="field-label engine")
                yield Input("" if v.ctx is None else str(v.ctx), placeholder="auto", id="ctx", compact=True)
                yield Label("KV type", classes="field-label engine")
                kv_options = [("auto", "auto"), *((t, t) for t in KV_TYPES)]
                yield Select(kv_options, value=v.kv_type, id="kv_type", allow_blank=False, compact=True)
                yield Label("GPU layers", classes="field-label engine")
                yield Input(v.gpu_layers, placeholder="auto", id="gpu_layers", compact=True)
                yield Label("Budget MB", classes="field-label engine")
                yield Input(
                    "" if v.budget_mb is None else str(v.budget_mb), placeholder="none", id="budget_mb", compact=True
                )
            yield Label("Context, KV type, GPU layers and budget reload the model.", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save", compact=True)
                yield Button("Save as default", id="default", compact=True)
                yield Button("Cancel", id="cancel", compact=True)
        yield Footer(compact=True)

    def read(self) -> SettingsValues:
        """The form as typed values; raises SettingsError naming the field that is wrong."""
        text = {w.id: w.value for w in self.query(Input) if w.id}
        try:
            temperature = float(text["temperature"] or 0)
        except ValueError as exc:
            raise SettingsError("temperature must be a number, e.g. 0.7 (0 is greedy)") from exc
        if not 0 <= temperature <= 5:
            raise SettingsError("temperature must be between 0 and 5")
        max_tokens = _optional_int(text["max_tokens"], "max tokens", 1) or self.values.max_tokens
        gpu = text["gpu_layers"].strip() or "auto"
        if gpu != "auto":
            try:
                if int(gpu) < -1:
                    raise ValueError(gpu)
            except ValueError as exc:
                raise SettingsError("GPU layers must be auto, -1 (all) or a number of layers") from exc
        return SettingsValues(
            system_prompt=self.query_one("#system_prompt", TextArea).text,
            temperature=temperature,
            max_tokens=max_tokens,
            ctx=_optional_int(text["ctx"], "context", 256),
            kv_type=str(self.query_one("#kv_type", Select).value),
            gpu_layers=gpu,
            budget_mb=_optional_int(text["budget_mb"], "budget", 64),
            compaction=str(self.query_one("#compaction", Select).value),
        )

    def _finish(self, as_default: bool) -> None:
        try:
            values = self.read()
        except SettingsError as exc:
            self.notify(str(exc), title="Settings", severity="error")
            return
        self.dismiss(SettingsResult(values, as_default))

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        self._finish(as_default=False)

    @on(Button.Pressed, "#default")
    def _save_default(self) -> None:
        self._finish(as_default=True)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
