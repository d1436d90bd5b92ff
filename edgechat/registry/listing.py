"""The rows of `edgechat models list` (and of the UI's model picker and the server's /v1/models)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ..config import Paths
from .schema import Registry
from .specs import local_path

if TYPE_CHECKING:
    from ..fit import Fit


@dataclass(frozen=True)
class ModelRow:
    """One registry model as listed: its default file, whether it is here, and its fit when asked.

    The field names are `models list --json`'s keys (`json.dumps(asdict(row))`). The fit_*
    and download_* fields stay None unless `list_models` was given a fits table.
    """

    name: str
    quant: str  # the default quantization's, as are file, path and size
    default_quant: str
    quants: tuple[str, ...]
    file: str
    source: Literal["hf", "pypi"]
    repo: str | None  # None for a PyPI source
    downloaded: bool
    path: str | None
    size: int | None  # bytes on disk, when downloaded
    context_length: int | None
    chat: bool
    note: str
    default: bool  # the registry's default model
    sampling: Mapping[str, Any] = field(default_factory=dict)  # the authors' recommended sampling
    fit: str | None = None  # fits | tight | too big | unknown
    fit_context: int | None = None  # tokens the planner would give it
    fit_estimated: bool | None = None  # planned from models.toml's shape, not the GGUF header
    fit_reason: str | None = None
    download_bytes: int | None = None
    download_estimated: bool | None = None


def list_models(registry: Registry, paths: Paths, fits: Mapping[str, Fit] | None = None) -> list[ModelRow]:
    """One row per registry model, the default model first, the others by name.

    With `fits` (fit.fits_table) each row also says whether the model fits this machine.
    """
    rows = []
    for name in sorted(registry.names(), key=lambda n: n != registry.default_name):
        entry = registry.entries[name]
        mf = entry.file()
        dest = local_path(entry, paths)
        downloaded = dest.is_file()
        row = ModelRow(
            name=name,
            quant=mf.quant,
            default_quant=entry.default_quant,
            quants=entry.quants,
            file=mf.file,
            source=entry.source,
            repo=entry.repo if entry.pypi is None else None,
            downloaded=downloaded,
            path=str(dest) if downloaded else None,
            size=dest.stat().st_size if downloaded else None,
            context_length=entry.context_length,
            chat=entry.chat,
            note=entry.note,
            default=name == registry.default_name,
            sampling=dict(entry.sampling),
        )
        f = (fits or {}).get(name)
        if f is not None:
            row = replace(
                row, fit=f.verdict, fit_context=f.context, fit_estimated=f.estimated, fit_reason=f.reason,
                download_bytes=f.download_bytes, download_estimated=f.download_estimated,
            )  # fmt: skip
        rows.append(row)
    return rows
