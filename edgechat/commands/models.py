"""`edgechat models list|pull|info`: the model registry, downloads and GGUF headers."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from .common import BudgetOpt, JsonOpt, guarded, notice, paths


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(
        help="The model registry: list, pull (download), info (GGUF metadata).", no_args_is_help=True
    )
    models_app.command("list")(models_list)
    models_app.command("pull")(models_pull)
    models_app.command("info")(models_info)
    app.add_typer(models_app, name="models")


@guarded
def models_list(budget_mb: BudgetOpt = None, json_out: JsonOpt = False) -> None:
    """Models in the registry, whether they are downloaded, and whether they fit this machine's free memory."""
    from ..fit import fits_table
    from ..registry import Registry, list_models

    where = paths()
    registry = Registry.load(where)
    rows = list_models(registry, where, fits_table(registry, where, (budget_mb or 0) * (1 << 20) or None))
    if json_out:
        print(json.dumps([asdict(r) for r in rows], default=str))
        return
    from rich.console import Console
    from rich.table import Table

    cells = []
    estimated = False
    for r in rows:
        estimated = estimated or bool(r.fit_estimated)
        cells.append([
            r.name + (" *" if r.default else ""), r.quant, "yes" if r.downloaded else "", r.fit or "",
            f"{r.fit_context:,}" if r.fit_context else "-",
            _size(r.download_bytes, bool(r.download_estimated)), r.note,
        ])  # fmt: skip
    console = Console()
    heads = ("name", "quant", "here", "fit", "context", "download")
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)] if cells else []
    room = max(12, console.width - sum(widths) - 2 * (len(heads) + 1))
    table = Table(*heads, "note", box=None)
    style = {"fits": "green", "tight": "yellow", "too big": "red"}
    for c in cells:  # the note takes what is left of the line, so a row stays one line
        c[6] = c[6] if len(c[6]) <= room else c[6][: room - 1] + "…"
        c[3] = f"[{style[c[3]]}]{c[3]}[/]" if c[3] in style else c[3]
        table.add_row(*c)
    console.print(table)
    console.print(
        "* the default model.  fit: for "
        + (f"a budget of {budget_mb:,} MiB" if budget_mb else "the memory free now")
        + "; context: the tokens it would get"
        + ("; ~ and models not downloaded: estimated from models.toml, not the GGUF header" if estimated else ""),
        style="dim",
    )


def _size(n: Any, estimated: bool) -> str:
    if not isinstance(n, int):
        return "?"
    return f"{'~' if estimated else ''}{n / 1e9:.2f} GB" if n >= 1e9 else f"{'~' if estimated else ''}{n / 1e6:.0f} MB"


@guarded
def models_pull(
    name: Annotated[str, typer.Argument(help="Registry name (name:quant) or owner/repo/file.gguf.")],
    quant: Annotated[str | None, typer.Option("--quant", help="Quantization to fetch.")] = None,
) -> None:
    """Download a model (resumable, checksum-verified)."""
    from ..config import private_dir
    from ..download_bar import DownloadBar
    from ..registry import pull

    where = paths()
    private_dir(where.data_dir)  # a pull may be the first thing to create it
    with DownloadBar(name) as bar:
        path = pull(name, where, quant=quant, progress=bar, notice=notice)
    print(path)


@guarded
def models_info(
    name: Annotated[str, typer.Argument(help="Registry name, owner/repo/file.gguf, or a local path.")],
    json_out: JsonOpt = False,
) -> None:
    """What the GGUF header says (read without loading the weights), and the model's recommended sampling."""
    from ..errors import ModelError
    from ..gguf_info import read_gguf
    from ..planner import resume_cost
    from ..registry import Registry, parse_spec, resolve_model

    where = paths()
    spec = parse_spec(name)
    entry = Registry.load(where).get(spec.name) if spec.kind == "registry" else None
    summary: dict[str, Any] = {}
    try:
        resolved = resolve_model(name, where, download=False)
        info = read_gguf(resolved.path)
        summary = {**info.summary(), "n_swa": info.n_swa, **resume_cost(info)}
    except ModelError as exc:
        if entry is None:
            raise
        notice(f"{exc.message}: {exc.hint} to read its GGUF header")  # what the registry knows still helps
        summary = {"name": entry.name, "downloaded": False, "context_length": entry.context_length}
    if entry is not None:
        summary["note"] = entry.note
        summary["recommended_sampling"] = dict(entry.sampling)
    if json_out:
        print(json.dumps(summary, default=str))
        return
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} = {b}" for a, b in v.items()) or "edgechat's defaults"
        print(f"{k:<{width}}  {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:<{width}}  {v}")
