"""The KV state-file format: a JSON header beside a payload written by llama.cpp.

A conversation's state is a few files in the states dir:
  <id>.json          header: format, model fingerprint, KV types, llama.cpp build,
                     token ids, payload name, size and CRC-32, and the checkpoints
  <id>-<gen>.kv      llama.cpp's own `llama_state_seq_save_file` output
  <id>-<gen>.ck<k>   context checkpoints (sliding-window and hybrid models only): the
                     part of the cache a trim cannot rewind, at a token count a later
                     turn may go back to (regenerate, edit, a re-rendered reply)
  <id>.dropped       only after the disk budget or `edgechat cache prune` removed the
                     state: why, so the next turn can say so once
Each save writes a new generation, fsyncs it, then atomically replaces the header: a
crash at any point leaves a header that names complete files (the previous ones until
the rename), so a failed or interrupted save never loses the last good state. Only
then are older generations removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import private_dir
from .engine import Checkpoint
from .errors import StateError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: no checkpoints
_CHUNK = 8 << 20
_CHECKPOINT_KEYS = {"n_tokens", "pos_min", "pos_max", "file", "size", "crc32"}


@dataclass(frozen=True)
class StateHeader:
    """Everything needed to decide, before touching llama.cpp, whether a payload is usable."""

    format: int
    conversation_id: str
    model_fingerprint: str
    type_k: str
    type_v: str
    flash_attn: bool
    llama_build: str
    tokens: tuple[int, ...]
    payload: str
    payload_size: int
    payload_crc32: int
    saved_at: float
    # Each: n_tokens, pos_min, pos_max, file, size, crc32.
    checkpoints: tuple[dict[str, Any], ...] = ()

    def check_compatible(self, *, fingerprint: str, type_k: str, type_v: str, flash_attn: bool) -> None:
        """Raise StateError naming the first mismatch (each would make llama.cpp refuse or misread).

        The llama.cpp build is not checked here: a state from another build is tried, and
        llama.cpp's own checks (magic, version, layer count, K/V types and row sizes) refuse
        what it cannot read. The model's identity is ours to check: the file holds only the
        architecture name.
        """
        if self.format not in READABLE_FORMATS:
            raise StateError(f"state format {self.format} is not one of {READABLE_FORMATS}")
        if self.model_fingerprint != fingerprint:
            raise StateError("state was saved with a different model file")
        if (self.type_k, self.type_v) != (type_k, type_v):
            raise StateError(f"state holds a {self.type_k}/{self.type_v} cache, not {type_k}/{type_v}")
        if self.flash_attn != flash_attn:
            raise StateError("state was saved with a different flash-attention setting")


def crc32_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """Write and fsync a file only its owner can read (its bytes are the conversation)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateFiles:
    """Reads and writes conversation states in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def header_path(self, cid: str) -> Path:
        return self.dir / f"{cid}.json"

    def exists(self, cid: str) -> bool:
        return self.header_path(cid).exists()

    def save(
        self,
        cid: str,
        tokens: Sequence[int],
        write_payload: Callable[[Path], None],
        checkpoints: Sequence[Checkpoint] = (),
        **fields: object,
    ) -> StateHeader:
        """Write a new generation; `write_payload(path)` produces llama.cpp's file there.

        On any failure (disk full included) the previous header and payload stay as
        they were and the partial file is removed; the error propagates as StateError.
        """
        private_dir(self.dir)
        gen = time.time_ns()
        payload = self.dir / f"{cid}-{gen}.kv"
        tmp_payload = payload.with_suffix(".kv.tmp")
        header_path = self.header_path(cid)
        tmp_header = header_path.with_suffix(".json.tmp")
        written: list[Path] = [payload]
        try:
            write_payload(tmp_payload)
            os.chmod(tmp_payload, 0o600)  # llama.cpp's fopen leaves it 0644: the tokens are the conversation
            _fsync_file(tmp_payload)
            crc = crc32_file(tmp_payload)
            size = tmp_payload.stat().st_size
            os.replace(tmp_payload, payload)
            cks = []
            for k, ck in enumerate(checkpoints):
                ck_path = self.dir / f"{cid}-{gen}.ck{k}"
                written.append(ck_path)
                data = ck.load()
                _write_private(ck_path, data)
                cks.append(
                    {"n_tokens": ck.n_tokens, "pos_min": ck.pos_min, "pos_max": ck.pos_max,
                     "file": ck_path.name, "size": len(data), "crc32": zlib.crc32(data)}
                )  # fmt: skip
            header = StateHeader(
                format=FORMAT_VERSION,
                conversation_id=cid,
                tokens=tuple(int(t) for t in tokens),
                payload=payload.name,
                payload_size=size,
                payload_crc32=crc,
                saved_at=time.time(),
                checkpoints=tuple(cks),
                **fields,  # type: ignore[arg-type]
            )
            _write_private(tmp_header, json.dumps(asdict(header), separators=(",", ":")).encode())
            os.replace(tmp_header, header_path)
            fsync_dir(self.dir)
        except BaseException as exc:  # Ctrl-C mid-save too: never leave a half-written file behind
            for leftover in (tmp_payload, tmp_header):
                leftover.unlink(missing_ok=True)
            try:
                current = self.read_header(cid, missing_ok=True)
            except StateError:
                current = None
            if current is None or current.payload != payload.name:
                for path in written:
                    path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StateError(
                    f"could not save the KV state of conversation {cid} ({exc.strerror or exc}); the save was skipped",
                    "free some disk space; the turn is stored and the transcript is safe",
                ) from exc
            raise
        self._remove_old_generations(cid, keep={p.name for p in written})
        self._mark_path(cid).unlink(missing_ok=True)
        return header

    def _remove_old_generations(self, cid: str, keep: set[str]) -> None:
        for old in self._generation_files(cid):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def _generation_files(self, cid: str) -> list[Path]:
        return [*self.dir.glob(f"{cid}-*.kv*"), *self.dir.glob(f"{cid}-*.ck*")]

    def read_header(self, cid: str, *, missing_ok: bool = False) -> StateHeader | None:
        path = self.header_path(cid)
        try:
            raw = json.loads(path.read_bytes())
            raw["tokens"] = tuple(raw["tokens"])
            raw["checkpoints"] = tuple(raw.get("checkpoints", ()))
            for ck in raw["checkpoints"]:
                if not isinstance(ck, dict) or set(ck) != _CHECKPOINT_KEYS:
                    raise ValueError("bad checkpoint entry")
            return StateHeader(**raw)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise StateError("no saved state") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise StateError(f"state header {path.name} is damaged") from exc

    def verified_payload(self, header: StateHeader) -> Path:
        """The payload path, after checking its size and checksum against the header."""
        path = self.dir / header.payload
        if not path.exists():
            raise StateError(f"state payload {header.payload} is missing")
        if path.stat().st_size != header.payload_size:
            raise StateError(f"state payload {header.payload} has the wrong size (truncated?)")
        if crc32_file(path) != header.payload_crc32:
            raise StateError(f"state payload {header.payload} fails its checksum")
        return path

    def checkpoints(self, header: StateHeader) -> list[Checkpoint]:
        """The header's checkpoints; each file is read and checked only when it is used."""
        return [
            Checkpoint(ck["n_tokens"], ck["pos_min"], ck["pos_max"], ck["size"], self._reader(ck))
            for ck in header.checkpoints
        ]

    def _reader(self, ck: dict[str, Any]) -> Callable[[], bytes]:
        path = self.dir / ck["file"]

        def read() -> bytes:
            try:
                data = path.read_bytes()
            except OSError:
                raise StateError(f"checkpoint {path.name} is missing") from None
            if len(data) != ck["size"] or zlib.crc32(data) != ck["crc32"]:
                raise StateError(f"checkpoint {path.name} is damaged")
            return data

        return read

    def delete(self, cid: str) -> None:
        self.header_path(cid).unlink(missing_ok=True)
        for path in self._generation_files(cid):
            path.unlink(missing_ok=True)
        self._mark_path(cid).unlink(missing_ok=True)

    def size(self, cid: str) -> int:
        header = self.read_header(cid, missing_ok=True)
        if header is None:
            return 0
        return header.payload_size + sum(ck["size"] for ck in header.checkpoints)

    # the disk budget -------------------------------------------------------------------

    def usage(self) -> dict[str, StateUsage]:
        """Every conversation's files in the directory, by one scan: bytes and last use.

        Stray files (a payload whose header was never written, a `.tmp` left by a killed
        process) count for their conversation, so a prune removes them too.
        """
        found: dict[str, list[tuple[int, float, bool]]] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return {}
        for entry in entries:
            m = _STATE_FILE.match(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            found.setdefault(m["cid"], []).append((st.st_size, st.st_mtime, entry.name.endswith(".json")))
        out = {}
        for cid, files in found.items():
            headers = [t for _, t, is_header in files if is_header]
            # A header's mtime is its last use: a save writes it, a restore touches it.
            last = max(headers) if headers else max(t for _, t, _h in files)
            out[cid] = StateUsage(cid, sum(size for size, _, _h in files), last, bool(headers))
        return out

    def touch(self, cid: str) -> None:
        """Mark a state as used now (a restore): the budget drops the least recently used first."""
        with contextlib.suppress(OSError):
            os.utime(self.header_path(cid))

    def drop(self, cid: str, why: str) -> None:
        """Delete a conversation's state and leave a small mark saying why, so its next turn can
        tell the user once that it is rebuilt from the transcript (and not wonder why it is slow)."""
        self.delete(cid)
        with contextlib.suppress(OSError):
            _write_private(self._mark_path(cid), why.encode())

    def take_mark(self, cid: str) -> str | None:
        """Why the conversation's state was dropped (once: the mark is removed), or None."""
        path = self._mark_path(cid)
        try:
            why = path.read_bytes().decode(errors="replace").strip()
        except OSError:
            return None
        path.unlink(missing_ok=True)
        return why or "it was removed"

    def _mark_path(self, cid: str) -> Path:
        return self.dir / f"{cid}.dropped"


@dataclass(frozen=True)
class StateUsage:
    """One conversation's state files on disk."""

    cid: str
    bytes: int
    last_used: float  # the header's mtime: the last save or restore
    complete: bool  # a header names them (False: only leftovers of an unfinished save)


# <id>.json (header), <id>.json.tmp, <id>-<gen>.kv, <id>-<gen>.kv.tmp, <id>-<gen>.ck<k>
_STATE_FILE = re.compile(r"^(?P<cid>.+?)(?:\.json(?:\.tmp)?|-\d+\.(?:kv(?:\.tmp)?|ck\d+))$")


def model_fingerprint(path: Path, cache_file: Path) -> str:
    """sha256 of the model file, cached by (path, size, mtime) so it is hashed once."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(cache_file.read_text())
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    cache[key] = digest
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_file)
    return digest
