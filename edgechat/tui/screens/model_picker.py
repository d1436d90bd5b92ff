"""Pick the model: a registry entry (downloaded, or pulled now with progress) or a local GGUF file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, DataTable, Footer, Input, Label, ProgressBar

from ...errors import EdgechatError
from ...fit import Fit, best_fit, fits_table
from ...memory import MemorySnapshot
from ...registry import ModelRow, Registry, list_models, pull
from ..figures import model_label, snapshot_mode

if TYPE_CHECKING:
    from ...config import Paths


class PathSuggester(Suggester):
    """Completes file paths from the disk, the way a shell would, preferring .gguf files."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        path = Path(value).expanduser()
        folder, stem = (path, "") if value.endswith("/") else (path.parent, path.name)
        try:
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name.startswith(stem))
        except OSError:
            return None
        names.sort(key=lambda n: (not n.endswith(".gguf"), n.startswith("."), n))
        if not names:
            return None
        return value + names[0][len(stem) :]


NOTE_WIDTH = 20  # what is left of an 80-column sheet after the fit, context and size columns


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _size(n: object, estimated: bool) -> str:
    if not isinstance(n, int):
        return ""
    return ("~" if estimated else "") + (f"{n / 1e9:.1f}G" if n >= 1e9 else f"{n / 1e6:.0f}M")


class ModelPicker(ModalScreen[str | None]):
    """Dismisses with a model spec (registry name or file path) that Runtime.load understands."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+d", "download", "Download")]

    def __init__(self, paths: Paths, current: str = "") -> None:
        super().__init__(classes="sheet")
        self.paths = paths
        self.current = current
        self.rows: list[ModelRow] = []
        self.downloading: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="sheet-box", id="picker") as box:
            box.border_title = "Model"
            box.border_subtitle = f"now: {model_label(self.current)}" if self.current else ""
            table: DataTable[str] = DataTable(id="models", cursor_type="row", zebra_stripes=True)
            for label, width in (
                ("", 1), ("model", 14), ("quant", 6), ("fit", 7), ("ctx", 5), ("size", 7), ("note", NOTE_WIDTH),
            ):  # fmt: skip
                table.add_column(label, width=width)
            yield table
            yield Label(
                "✓ here  ↓ downloaded when chosen  fit, ctx: for the free memory  ~ guess",
                classes="hint legend",
            )
            yield Label("", id="suggestion", classes="hint")
            yield Label("…or a GGUF file on this machine:", classes="field-label")
            yield Input(placeholder="/path/to/model.gguf", id="path", suggester=PathSuggester(), compact=True)
            yield ProgressBar(id="progress", show_eta=False)
            with Horizontal(classes="buttons"):
                yield Button("Use", variant="primary", id="use", compact=True)
                yield Button("Download", id="download", compact=True)
                yield Button("Cancel", id="cancel", compact=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#progress").display = False
        registry = None
        fits: dict[str, Fit] = {}
        try:
            registry = Registry.load(self.paths)
            # Snapshot tests plan against a fixed 8 GiB machine: the verdicts must not follow the test box's RAM.
            fixed = (
                MemorySnapshot(ram_total=16 << 30, ram_available=8 << 30, process_rss=0) if snapshot_mode() else None
            )
            fits = fits_table(registry, self.paths, snapshot=fixed)
            self.rows = list_models(registry, self.paths, fits)
        except EdgechatError as exc:
            self.notify(exc.hint, title=exc.message, severity="error")
        best = best_fit(registry, fits) if registry is not None else None
        line = self.query_one("#suggestion", Label)
        line.display = best is not None
        if best is not None and registry is not None:
            line.update(f"suggested for this machine: {best}  ·  {registry.default_name} works offline now")
        self._fill()

    def _fill(self) -> None:
        table = self.query_one("#models", DataTable)
        table.clear()
        for row in self.rows:
            ctx = row.fit_context or row.context_length
            table.add_row(
                "✓" if row.downloaded else "↓",
                row.name,
                row.quant,
                row.fit or "",
                f"{ctx // 1024}k" if ctx and ctx >= 1024 else str(ctx or ""),
                _size(row.download_bytes, bool(row.download_estimated)),
                _clip(row.note, NOTE_WIDTH),
                key=row.name,
            )
        if not self.rows:
            self.query_one("#path", Input).focus()
            return
        names = [r.name for r in self.rows]
        if self.current in names:
            table.move_cursor(row=names.index(self.current))

    def _selected(self) -> ModelRow | None:
        table = self.query_one("#models", DataTable)
        if not self.rows or table.cursor_row < 0 or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    @on(DataTable.RowSelected)
    def _row_chosen(self) -> None:
        self.action_use()

    @on(Input.Submitted, "#path")
    def _path_chosen(self) -> None:
        self.action_use()

    @on(Button.Pressed, "#use")
    def action_use(self) -> None:
        text = self.query_one("#path", Input).value.strip()
        if text:
            path = Path(text).expanduser()
            if not path.is_file():
                self.notify("pick an existing .gguf file", title=f"no file at {path}", severity="error")
                return
            self.dismiss(str(path.resolve()))
            return
        row = self._selected()
        if row is None:
            self.notify("type a file path, or add models to models.toml", title="no model chosen", severity="warning")
        elif row.downloaded:
            self.dismiss(row.name)
        else:
            self._start_download(row)

    @on(Button.Pressed, "#download")
    def action_download(self) -> None:
        row = self._selected()
        if row is not None:
            self._start_download(row)

    def _start_download(self, row: ModelRow) -> None:
        if self.downloading:
            self.notify(f"{self.downloading} is still downloading", severity="warning")
            return
        name = row.name
        self.downloading = name
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.query_one("#picker").border_subtitle = f"downloading {name}…"
        self._download(name)

    @work(thread=True, exit_on_error=False, group="download")
    def _download(self, name: str) -> None:
        """Pull in a thread; progress reaches the bar through call_from_thread."""

        def progress(done: int, total: int | None) -> None:
            if self.is_attached:
                self.app.call_from_thread(self.query_one("#progress", ProgressBar).update, total=total, progress=done)

        try:
            pull(name, self.paths, progress=progress)
        except EdgechatError as exc:
            self.app.call_from_thread(self._download_failed, exc.message, exc.hint)
            return
        except Exception as exc:  # noqa: BLE001 - network and disk errors arrive in many types
            self.app.call_from_thread(self._download_failed, f"download of {name} failed: {exc}", "try again")
            return
        self.app.call_from_thread(self._downloaded, name)

    def _download_failed(self, message: str, hint: str) -> None:
        self.downloading = None
        if self.is_attached:
            self.query_one("#progress").display = False
            self.query_one("#picker").border_subtitle = ""
        self.app.notify(hint, title=message, severity="error", timeout=10)

    def _downloaded(self, name: str) -> None:
        self.downloading = None
        self.app.notify(f"{name} is ready", title="download finished")
        if self.is_attached:
            self.dismiss(name)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if self.downloading:
            self.app.notify(f"{self.downloading} keeps downloading in the background")
        self.dismiss(None)
