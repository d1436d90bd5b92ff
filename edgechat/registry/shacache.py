"""The sha cache: which downloaded model files were verified, so an unchanged file is not hashed again.

Hashing a 4 GB model takes seconds; every `pull` and every load of a registry model asks
whether its file is the right one. `models/.verified.json` records, per file under
`paths.models_dir`, the sha256 it had and the size and mtime it had then: a file whose
size and mtime still match is taken as verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..config import Paths

Notice = Callable[[str], None]
CHUNK = 1 << 20  # bytes read (and written) per step while hashing or copying a model file
VERIFIED = ".verified.json"


def sha256_file(path: Path) -> str:
    """The file's sha256, read in CHUNK pieces (a model never sits in memory whole)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verified_sha(dest: Path, paths: Paths) -> str | None:
    """The sha256 recorded when `dest` was last verified, if the file is unchanged since."""
    try:
        record = json.loads((paths.models_dir / VERIFIED).read_text(encoding="utf-8"))
        item = record[dest.relative_to(paths.models_dir).as_posix()]
        st = dest.stat()
        if item["size"] == st.st_size and item["mtime_ns"] == st.st_mtime_ns:
            return str(item["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def record_verified(dest: Path, sha: str, paths: Paths) -> None:
    """Remember a verification by path, size and mtime, so an unchanged file is not hashed again."""
    cache = paths.models_dir / VERIFIED
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


def already_verified(dest: Path, paths: Paths, sha: str | None, notice: Notice) -> bool:
    """Whether `dest` is already the right file; a wrong one is moved aside (never used, never deleted)."""
    if not dest.is_file():
        return False
    known = verified_sha(dest, paths)
    if known is not None and (sha is None or known == sha):
        return True
    if sha is None:
        return False
    actual = sha256_file(dest)
    if actual == sha:
        record_verified(dest, sha, paths)
        return True
    aside = dest.with_name(dest.name + ".bad")
    os.replace(dest, aside)
    notice(f"{dest.name} had the wrong sha256, moved aside to {aside.name}")
    return False
