"""Facts about a model file that are slow to work out, kept on disk by (path, size, mtime).

Every process that loads a model needs two of them before its first token, and both
grow with the vocabulary (issue 12, cold start):

- the GGUF header (`header`): reading it walks every entry of the tokenizer's string
  arrays to find where the tensors start, ~100,000 strings for SmolLM2, 520,000 for Gemma 3;
- the texts of the special tokens (`special_texts`), as this llama.cpp build marks them:
  one call per vocabulary entry, 0.1-0.2 s for Gemma 3's 262,144.

One small JSON file per model under `cache_dir`, named by the model's path. The key
(resolved path, size, mtime) is the one the sha256 fingerprint cache trusts too: a file
that changes gets new facts. A missing, damaged or stale entry is worked out again; a
cache that cannot be written is skipped (the facts are still returned).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .config import private_dir
from .gguf_info import GGUFInfo, TensorInfo, read_gguf


def header(path: str | Path, cache_dir: Path | None) -> GGUFInfo:
    """read_gguf(path), from the cache when the file is unchanged (errors are read_gguf's own)."""
    p = Path(path).expanduser()
    entry, key = _load(p, cache_dir)
    h = entry.get("header") if entry is not None else None
    if isinstance(h, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return GGUFInfo(
                p, int(h["file_size"]), int(h["version"]), dict(h["metadata"]),
                tuple(TensorInfo(n, tuple(s), t, o, b) for n, s, t, o, b in h["tensors"]), int(h["data_offset"]),
            )  # fmt: skip
    info = read_gguf(p)
    if key is not None:
        _store(p, cache_dir, key, "header", {
            "file_size": info.file_size, "version": info.version, "metadata": info.metadata,
            "tensors": [[t.name, list(t.shape), t.type_id, t.offset, t.nbytes] for t in info.tensors],
            "data_offset": info.data_offset,
        })  # fmt: skip
    return info


def special_texts(
    path: str | Path, cache_dir: Path | None, build: str, compute: Callable[[], Iterable[str]]
) -> list[str]:
    """The special-token texts `compute()` finds, cached per model file and llama.cpp `build`."""
    p = Path(path).expanduser()
    entry, key = _load(p, cache_dir)
    cached = entry.get("special_texts") if entry is not None else None
    if isinstance(cached, dict) and cached.get("build") == build and isinstance(cached.get("texts"), list):
        return [str(t) for t in cached["texts"]]
    texts = sorted(set(compute()))
    if key is not None:
        _store(p, cache_dir, key, "special_texts", {"build": build, "texts": texts})
    return texts


def _key(p: Path) -> str | None:
    try:
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return None


def _file(p: Path, cache_dir: Path) -> Path:
    return cache_dir / (hashlib.sha256(str(p.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json")


def _load(p: Path, cache_dir: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the cached entry if it is this file's, the file's key); (None, None) without a cache."""
    if cache_dir is None:
        return None, None
    key = _key(p)
    if key is None:
        return None, None
    try:
        entry = json.loads(_file(p, cache_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, key
    return (entry, key) if isinstance(entry, dict) and entry.get("key") == key else (None, key)


def _store(p: Path, cache_dir: Path | None, key: str, field: str, value: Any) -> None:
    if cache_dir is None:
        return
    entry, _ = _load(p, cache_dir)
    entry = {**(entry or {}), "key": key, field: value}
    with contextlib.suppress(OSError, TypeError, ValueError):
        private_dir(cache_dir.parent)  # the data directory: made private when this creates it
        private_dir(cache_dir)
        target = _file(p, cache_dir)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry), encoding="utf-8")
        os.replace(tmp, target)
