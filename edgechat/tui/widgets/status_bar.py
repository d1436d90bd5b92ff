"""One line of live figures: model, KV type, context gauge, KV size, memory (RPC devices too), last turn, resume source."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from ..figures import bar, duration, megabytes, snapshot_mode

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
MODEL_WIDTH = 20  # long GGUF file names would push the live figures off an 80-column bar


@dataclass(frozen=True)
class StatusFigures:
    """Everything the bar shows; the app replaces it whole, so a render never sees half an update."""

    model: str = ""
    kv_type: str = ""
    ctx_used: int = 0
    ctx_limit: int = 0
    kv_bytes: int = 0
    rss_bytes: int = 0
    ram_total: int = 0
    budget_mb: int | None = None  # RAM the runtime may use: --budget-mb, else the planner's share of free RAM
    vram_used: int = 0
    vram_total: int = 0
    vram_budget_mb: int | None = None
    ram_free: int = 0  # free RAM against the floor the runtime keeps (below it, the context shrinks)
    ram_floor: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    restore: str = ""
    activity: str = ""  # loading model… / thinking… / generating…; empty when idle
    activity_since: float = 0.0
    threads: str = ""  # the last turn's CPU threads, e.g. "1/2 threads" (decode/prefill)
    remote: tuple[tuple[str, int, int], ...] = ()  # llama.cpp RPC devices: (host:port, bytes used, bytes total)


class StatusBar(Widget):
    """Fits the most useful figures to the width: lower-priority ones drop off first."""

    figures: reactive[StatusFigures] = reactive(StatusFigures, layout=False)
    frame: reactive[int] = reactive(0)

    def update(self, **changes: Any) -> None:
        self.figures = replace(self.figures, **changes)

    def on_mount(self) -> None:
        self._spin = self.set_interval(0.1, self._tick, pause=True)

    def watch_figures(self, old: StatusFigures, new: StatusFigures) -> None:
        if not self.is_mounted:
            return
        # The spinner shows that something is happening while nothing else moves (loading, prefill);
        # once tokens stream the reply itself moves, and each spinner frame would be a repaint.
        if new.activity and new.activity != "generating…":
            self._spin.resume()
        else:
            self._spin.pause()

    def _tick(self) -> None:
        self.frame += 1

    def segments(self) -> list[tuple[int, Content]]:
        """(priority, text) pairs in display order; lower numbers survive a narrow terminal."""
        f = self.figures
        still = snapshot_mode()
        out: list[tuple[int, Content]] = []
        if f.activity:
            spin = "•" if still else SPINNER[self.frame % len(SPINNER)]
            text = f.activity
            waited = time.perf_counter() - f.activity_since
            if f.activity_since and waited >= 1 and f.activity != "generating…" and not still:
                text += f" {waited:.0f} s"  # a long load or prefill visibly moves on
            out.append((0, Content.from_markup(f"[$warning]{spin} $text[/]", text=text)))
        if f.model:
            name = f.model if len(f.model) <= MODEL_WIDTH else f.model[: MODEL_WIDTH - 1] + "…"
            label = name + (f" · {f.kv_type}" if f.kv_type else "")
            out.append((1, Content.from_markup("[b]$label[/b]", label=label)))
        if f.ctx_limit:
            ratio = f.ctx_used / f.ctx_limit
            colour = "$error" if ratio > 0.9 else "$warning" if ratio > 0.7 else "$accent"
            filled = bar(f.ctx_used, f.ctx_limit, 6)
            out.append(
                (2, Content.from_markup(
                    f"ctx [{colour}]$full[/][$text-muted 50%]$empty[/] $used/$limit",
                    full=filled, empty="━" * (6 - len(filled)), used=str(f.ctx_used), limit=str(f.ctx_limit),
                ))
            )  # fmt: skip
        if f.restore and not still:
            out.append((3, Content.from_markup("[$success]$text[/]", text=f.restore)))
        if f.ttft_s is not None and not still:
            rate = f" · {f.tokens_per_s:.0f} tok/s" if f.tokens_per_s else ""
            threads = f" · {f.threads}" if f.threads else ""
            out.append((4, Content(f"TTFT {duration(f.ttft_s)}{rate}{threads}")))
        if f.model and f.ctx_limit:
            out.append((5, Content(f"KV {megabytes(f.kv_bytes)}")))
        if f.rss_bytes and not still:
            if f.budget_mb:
                ram = f"RAM {megabytes(f.rss_bytes)}/{megabytes(f.budget_mb * 2**20)} budget"
            else:
                ram = f"RAM {megabytes(f.rss_bytes)}/{megabytes(f.ram_total)}"
            out.append((6, Content(ram)))
        if f.ram_floor and not still:
            low = f.ram_free < f.ram_floor
            free = f"free {megabytes(f.ram_free)}/floor {megabytes(f.ram_floor)}"
            out.append((8, Content.from_markup("[$error]$free[/]" if low else "$free", free=free)))
        if f.vram_total and not still:
            limit = f"{megabytes(f.vram_budget_mb * 2**20)} budget" if f.vram_budget_mb else megabytes(f.vram_total)
            out.append((7, Content(f"VRAM {megabytes(f.vram_used)}/{limit}")))
        for endpoint, used, total in () if still else f.remote:
            out.append((7, Content(f"RPC {endpoint} {megabytes(used)}/{megabytes(total)}")))
        return out

    def render(self) -> Content:
        sep = Content.from_markup("[$text-muted] │ [/]")
        parts = self.segments()
        width = self.size.width - 2
        while parts:
            line = sep.join(p for _, p in parts)
            if line.cell_length <= width:
                return Content(" ") + line
            worst = max(range(len(parts)), key=lambda i: parts[i][0])
            parts.pop(worst)
        return Content("")
