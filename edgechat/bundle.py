"""Portable conversations: one file with a transcript, its settings and its KV state.

`edgechat conversations export ID --bundle FILE` on one machine, `edgechat conversations
import FILE` on another; the next turn there resumes from the bundled state when the model
file, the llama.cpp build and the KV types match (the state cache's usual checks decide),
and re-reads the transcript otherwise, with the usual one notice.

The bundle is a zip archive (stdlib only), version BUNDLE_VERSION:
  manifest.json      format, version, conversation id, and every other member's size and sha256
  conversation.json  the conversation row (title, model spec, settings, times), every message
                     with its flags (summary, compacted, replaced, partial and why), and what is
                     known of the model file (name, size, sha256 fingerprint)
  state.json         the state header in state.py's format; its payload and checkpoint names
                     are the members below
  state.kv           llama.cpp's state payload
  state.ck<k>        context checkpoints (sliding-window and hybrid models)
A conversation without a usable state file travels without the state members.

Import checks everything before it writes anything: the format and version, that the members
are exactly the manifest's with its sizes and checksums, that every id agrees. A tampered,
truncated or foreign file is refused with one line and leaves the data directory untouched.
The file holds the whole conversation: it is written 0600, atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Paths
from .errors import EdgechatError, StateError
from .state import fsync_dir

if TYPE_CHECKING:
    from .state import StateFiles, StateHeader
    from .store import ConversationRecord, Message, Store

BUNDLE_FORMAT = "edgechat-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
CONVERSATION = "conversation.json"
HEADER = "state.json"
PAYLOAD = "state.kv"
_CHUNK = 8 << 20
_SMALL = 64 << 20  # a manifest or header larger than this is not one of ours
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # ids name files in the states dir: no separators
_CK = re.compile(r"state\.ck[0-9]{1,6}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_ROLES = ("system", "user", "assistant")
_KINDS = ("message", "summary")
_REEXPORT = "export it again with `edgechat conversations export ID --bundle FILE`"


class BundleError(EdgechatError):
    """A bundle that cannot be written or imported as it is."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_bundle` wrote: the `conversations export --bundle --json` fields."""

    conversation_id: str
    path: str
    bytes: int
    messages: int
    model: str
    state: bool  # the KV state travels with the transcript
    state_bytes: int  # its payload and checkpoints
    checkpoints: int
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportResult:
    """What `import_bundle` stored: the `conversations import --json` fields."""

    conversation_id: str  # its id here (a fresh one with as_new)
    source_id: str  # its id in the bundle
    title: str
    messages: int
    model: str  # the model spec its next turn loads
    model_here: bool  # that spec names a model file on this machine now
    state: bool
    state_bytes: int
    checkpoints: int
    notices: tuple[str, ...] = ()


# export -------------------------------------------------------------------------------------


def export_bundle(
    paths: Paths, conversation: str, dest: Path, *, store: Store | None = None, lock_timeout_s: float = 30.0
) -> ExportResult:
    """Write conversation `conversation` (an id or a unique prefix) and its KV state to `dest`.

    Read under the conversation's lock, so a turn running in another process cannot change the
    transcript or replace the state files half-way through.
    """
    from .lock import ConversationLock
    from .state import StateFiles
    from .store import Store

    own = store is None
    db = store or Store(paths.db_path)
    try:
        cid = db.conversation(conversation).id
        with ConversationLock(paths.data_dir / "locks", cid, lock_timeout_s):
            rec = db.conversation(cid)
            messages = db.messages(cid)
            notices: list[str] = []
            saved = _saved_state(StateFiles(paths.states_dir), cid, notices)
            header = saved[0] if saved else None
            doc = {
                "conversation": {
                    "id": rec.id, "title": rec.title, "model": rec.model, "settings": rec.settings,
                    "created_at": rec.created_at, "updated_at": rec.updated_at,
                },
                "messages": [_message_doc(m) for m in messages],
                "model": _model_doc(paths, rec.model, header),
            }  # fmt: skip

            size = _write_atomically(dest, lambda zf: _write_members(zf, cid, doc, saved))
    finally:
        if own:
            db.close()
    return ExportResult(
        conversation_id=cid,
        path=str(dest),
        bytes=size,
        messages=len(messages),
        model=rec.model,
        state=saved is not None,
        state_bytes=(saved[0].payload_size + sum(len(c) for c in saved[2])) if saved else 0,
        checkpoints=len(saved[2]) if saved else 0,
        notices=tuple(notices),
    )


def _write_members(
    zf: zipfile.ZipFile, cid: str, doc: dict[str, Any], saved: tuple[StateHeader, Path, list[bytes]] | None
) -> None:
    """The members, then the manifest that lists them (hashed as they are written)."""
    members = [_add_bytes(zf, CONVERSATION, _json(doc))]
    if saved is not None:
        header, payload, cks = saved
        bundled = replace(
            header,
            payload=PAYLOAD,
            checkpoints=tuple({**ck, "file": f"state.ck{k}"} for k, ck in enumerate(header.checkpoints)),
        )
        members.append(_add_bytes(zf, HEADER, _json(asdict(bundled))))
        members.append(_add_file(zf, PAYLOAD, payload))
        members += [_add_bytes(zf, f"state.ck{k}", data, compress=False) for k, data in enumerate(cks)]
    manifest = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "conversation_id": cid, "created_at": time.time(),
        "members": members,
    }  # fmt: skip
    _add_bytes(zf, MANIFEST, _json(manifest))


def _saved_state(files: StateFiles, cid: str, notices: list[str]) -> tuple[StateHeader, Path, list[bytes]] | None:
    """The conversation's state (header, checked payload, checkpoint bytes), or None: a missing
    or damaged one leaves the bundle with the transcript alone (which rebuilds it)."""
    try:
        header = files.read_header(cid, missing_ok=True)
        if header is None:
            return None
        if header.conversation_id != cid:
            raise StateError(f"its header names conversation {header.conversation_id}")
        payload = files.verified_payload(header)
        return header, payload, [ck.load() for ck in files.checkpoints(header)]
    except StateError as exc:
        notices.append(f"the saved state of {cid} is not usable ({exc.message}): the bundle holds the transcript only")
        return None


def _message_doc(m: Message) -> dict[str, Any]:
    doc = asdict(m)
    del doc["id"], doc["conversation_id"]  # the importing store numbers its own rows
    return doc


def _model_doc(paths: Paths, spec: str, header: StateHeader | None) -> dict[str, Any]:
    """What lets another machine find the same model file: its name, size and sha256 (the state's
    fingerprint, so no model is hashed here)."""
    from .registry import resolve_model

    file, size = None, None
    with contextlib.suppress(EdgechatError, OSError):
        path = resolve_model(spec, paths, download=False).path
        file, size = path.name, path.stat().st_size
    return {"spec": spec, "file": file, "size": size, "fingerprint": header.model_fingerprint if header else None}


def _json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _zinfo(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o100600 << 16  # unzip restores it private too
    return info


def _add_bytes(zf: zipfile.ZipFile, name: str, data: bytes, *, compress: bool = True) -> dict[str, Any]:
    zf.writestr(_zinfo(name, compress), data)
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _add_file(zf: zipfile.ZipFile, name: str, path: Path) -> dict[str, Any]:
    """Stream a (possibly multi-GB) state payload in, hashing it on the way (stored: KV bytes
    hardly compress, and deflate would cost more than the copy)."""
    h, size = hashlib.sha256(), 0
    big = path.stat().st_size >= zipfile.ZIP64_LIMIT
    with path.open("rb") as src, zf.open(_zinfo(name, False), "w", force_zip64=big) as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return {"name": name, "size": size, "sha256": h.hexdigest()}


def _write_atomically(dest: Path, write: Callable[[zipfile.ZipFile], None]) -> int:
    """Write the archive to a private temp file beside `dest`, fsync, rename: a crash or a full
    disk leaves the old file (or none), never half a bundle under its name."""
    if dest.is_dir():
        raise BundleError(f"{dest} is a directory", "give a file name, e.g. chat.edgechat")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            os.chmod(tmp, 0o600)  # a leftover temp file keeps its old mode through O_CREAT
            with zipfile.ZipFile(fh, "w", allowZip64=True) as zf:
                write(zf)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(
            f"cannot write {dest}: {exc.strerror or exc}", "check that its directory exists, is writable and has room"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return dest.stat().st_size


# import -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    size: int
    sha256: str
    crc32: int


@dataclass(frozen=True)
class _Bundle:
    """A bundle whose every member has been checked against its manifest."""

    zf: zipfile.ZipFile
    members: dict[str, _Member]
    record: ConversationRecord
    messages: list[Message]
    model: dict[str, Any]
    header: StateHeader | None
    notices: tuple[str, ...]

    def read(self, name: str) -> bytes:
        """A small member's bytes, checked again (the file could have changed since the check)."""
        data = self.zf.read(name)
        if hashlib.sha256(data).hexdigest() != self.members[name].sha256:
            raise _damaged(f"{name} changed while it was imported")
        return data

    def copy(self, name: str, dest: Path) -> None:
        h = hashlib.sha256()
        with self.zf.open(name) as src:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the tokens are the conversation
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        if h.hexdigest() != self.members[name].sha256:
            raise _damaged(f"{name} changed while it was imported")


def import_bundle(
    paths: Paths,
    source: Path,
    *,
    as_new: bool = False,
    store: Store | None = None,
    lock_timeout_s: float = 30.0,
) -> ImportResult:
    """Store the bundled conversation (and its KV state) in this data directory.

    Nothing is written unless the whole bundle checks out. An id that exists here is refused
    (`as_new` imports it under a fresh id; the state header is rewritten with it). A model spec
    that names a file missing here is matched by sha256 against the local models.
    """
    from .lock import ConversationLock
    from .state import StateFiles
    from .store import Store

    with _open(source) as bundle:
        own = store is None
        db = store or Store(paths.db_path)
        try:
            src = bundle.record
            cid = db.new_id() if as_new else src.id
            notices = list(bundle.notices)
            with ConversationLock(paths.data_dir / "locks", cid, lock_timeout_s):
                if db.has_conversation(cid):
                    existing = db.conversation(cid)
                    raise BundleError(
                        f"conversation {cid} ({existing.title!r}) is already here",
                        "import a copy under a fresh id with --as-new, or delete this one first",
                    )
                spec, here = _model_here(paths, src.model, bundle.model, cid, notices)
                states = StateFiles(paths.states_dir)
                if bundle.header is not None:
                    _write_state(states, cid, bundle)
                try:
                    db.import_conversation(
                        replace(src, id=cid, model=spec, updated_at=time.time()),
                        [replace(m, conversation_id=cid) for m in bundle.messages],
                    )
                except BaseException:
                    states.delete(cid)
                    raise
        finally:
            if own:
                db.close()
    h = bundle.header
    return ImportResult(
        conversation_id=cid,
        source_id=src.id,
        title=src.title,
        messages=len(bundle.messages),
        model=spec,
        model_here=here,
        state=h is not None,
        state_bytes=(h.payload_size + sum(ck["size"] for ck in h.checkpoints)) if h else 0,
        checkpoints=len(h.checkpoints) if h else 0,
        notices=tuple(notices),
    )


def _write_state(states: StateFiles, cid: str, bundle: _Bundle) -> None:
    """The bundled state as this conversation's state file, through state.py's own atomic save
    (so the header names `cid`, its files and their CRCs exactly as a turn would write them)."""
    from .engine import Checkpoint

    h = bundle.header
    assert h is not None
    cks = [
        Checkpoint(ck["n_tokens"], ck["pos_min"], ck["pos_max"], ck["size"], _loader(bundle, ck["file"]))
        for ck in h.checkpoints
    ]
    states.save(
        cid, h.tokens, lambda path: bundle.copy(PAYLOAD, path), cks,
        model_fingerprint=h.model_fingerprint, type_k=h.type_k, type_v=h.type_v, flash_attn=h.flash_attn,
        llama_build=h.llama_build,
    )  # fmt: skip


def _loader(bundle: _Bundle, name: str) -> Callable[[], bytes]:
    return lambda: bundle.read(name)


def _damaged(detail: str) -> BundleError:
    return BundleError(f"damaged or changed after export ({detail})", _REEXPORT)


# What a damaged or cut zip raises from the standard library while it is read.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError,
               NotImplementedError, RuntimeError, zlib.error)  # fmt: skip


@contextlib.contextmanager
def _open(source: Path) -> Iterator[_Bundle]:
    """Open and check a bundle (every member read and hashed); one BundleError line otherwise,
    naming the file."""
    try:
        fh = source.open("rb")
    except OSError as exc:
        raise BundleError(f"cannot read {source}: {exc.strerror or exc}", "check the path") from None
    with fh:
        try:
            zf = zipfile.ZipFile(fh)
        except _ZIP_ERRORS as exc:
            raise BundleError(f"{source}: not an edgechat bundle, or truncated ({exc})", _REEXPORT) from None
        with zf:
            try:
                bundle = _check(zf)
            except BundleError as exc:
                raise BundleError(f"{source}: {exc.message}", exc.hint) from None
            except _ZIP_ERRORS as exc:
                raise BundleError(f"{source}: {_damaged(str(exc) or type(exc).__name__).message}", _REEXPORT) from None
            try:
                yield bundle
            except BundleError as exc:
                raise BundleError(f"{source}: {exc.message}", exc.hint) from None
            except (zipfile.BadZipFile, zlib.error) as exc:  # the file changed after it was checked
                raise BundleError(f"{source}: {_damaged(str(exc)).message}", _REEXPORT) from None


def _check(zf: zipfile.ZipFile) -> _Bundle:
    names = zf.namelist()
    if len(set(names)) != len(names):
        raise _damaged("a member appears twice")
    if MANIFEST not in names:
        raise BundleError("not an edgechat bundle (it has no manifest.json)", _REEXPORT)
    manifest = _load_json(zf, MANIFEST, zf.getinfo(MANIFEST).file_size)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError("not an edgechat bundle (its manifest is not one)", _REEXPORT)
    version: int = manifest.get("version", 0)
    if not _is_int(version) or version < 1:
        raise _damaged(f"bundle version {version!r}")
    if version > BUNDLE_VERSION:
        raise BundleError(
            f"written by a newer edgechat (bundle version {version}; this one reads {BUNDLE_VERSION})",
            "upgrade edgechat on this machine",
        )
    listed = manifest.get("members")
    if not isinstance(listed, list):
        raise _damaged("the manifest lists no members")
    members: dict[str, _Member] = {}
    for entry in listed:
        if not (
            isinstance(entry, dict) and isinstance(entry.get("name"), str) and _is_int(entry.get("size"))
            and isinstance(entry.get("sha256"), str) and _SHA256.match(entry["sha256"])
        ):  # fmt: skip
            raise _damaged("a manifest entry is malformed")
        name = entry["name"]
        if name in members or name == MANIFEST:
            raise _damaged(f"the manifest lists {name} twice")
        if name not in names:
            raise _damaged(f"{name} is missing")
        actual = zf.getinfo(name).file_size
        if actual != entry["size"]:
            raise _damaged(f"{name} holds {actual} bytes, the manifest says {entry['size']}")
        size, sha, crc = _digest(zf, name)
        if size != entry["size"]:
            raise _damaged(f"{name} holds {size} bytes, the manifest says {entry['size']}")
        if sha != entry["sha256"]:
            raise _damaged(f"{name} fails its sha256")
        members[name] = _Member(size, sha, crc)
    extra = sorted(set(names) - set(members) - {MANIFEST})
    if extra:
        raise _damaged(f"{extra[0]} is not in the manifest")
    foreign = sorted(n for n in members if n not in (CONVERSATION, HEADER, PAYLOAD) and not _CK.match(n))
    if foreign:
        raise _damaged(f"{foreign[0]} is not part of a version {BUNDLE_VERSION} bundle")

    if CONVERSATION not in members:
        raise _damaged(f"{CONVERSATION} is missing")
    record, messages, model = _conversation(_load_json(zf, CONVERSATION, members[CONVERSATION].size))
    if manifest.get("conversation_id") != record.id:
        raise _damaged(f"the manifest names conversation {manifest.get('conversation_id')!r}, not {record.id}")
    notices: list[str] = []
    header = None
    state_names = {n for n in members if n.startswith("state.")}
    if HEADER in members:
        header = _header(_load_json(zf, HEADER, members[HEADER].size), record.id, members, notices)
    expected = {HEADER, PAYLOAD, *(ck["file"] for ck in header.checkpoints)} if header else set()
    if header is None and notices:
        expected = state_names  # an unreadable (newer) state format: its files are skipped
    if state_names != expected:
        raise _damaged(f"its state members do not match the header ({', '.join(sorted(state_names ^ expected))})")
    return _Bundle(zf, members, record, messages, model, header, tuple(notices))


def _digest(zf: zipfile.ZipFile, name: str) -> tuple[int, str, int]:
    """Size, sha256 and CRC-32 of a member, streamed (zipfile also checks its own CRC at the end)."""
    h, crc, size = hashlib.sha256(), 0, 0
    with zf.open(name) as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, h.hexdigest(), crc


def _load_json(zf: zipfile.ZipFile, name: str, size: int) -> Any:
    if name != CONVERSATION and size > _SMALL:
        raise _damaged(f"{name} is {size} bytes")
    return json.loads(zf.read(name).decode("utf-8"))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need(doc: Any, key: str, ok: Callable[[Any], bool], where: str) -> Any:
    if not isinstance(doc, dict) or key not in doc or not ok(doc[key]):
        raise _damaged(f"{where}: {key} is missing or malformed")
    return doc[key]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _opt(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _conversation(doc: Any) -> tuple[ConversationRecord, list[Message], dict[str, Any]]:
    """conversation.json as store values, every field type-checked (it came from elsewhere)."""
    from .store import ConversationRecord, Message

    conv = _need(doc, "conversation", lambda v: isinstance(v, dict), CONVERSATION)
    cid = _need(conv, "id", lambda v: isinstance(v, str) and bool(_ID.match(v)), "conversation")
    record = ConversationRecord(
        id=cid,
        title=_need(conv, "title", _is_str, "conversation"),
        model=_need(conv, "model", _is_str, "conversation"),
        settings=_need(conv, "settings", lambda v: isinstance(v, dict), "conversation"),
        created_at=float(_need(conv, "created_at", _is_num, "conversation")),
        updated_at=float(_need(conv, "updated_at", _is_num, "conversation")),
    )
    raw_messages = _need(doc, "messages", lambda v: isinstance(v, list), CONVERSATION)
    messages, seqs = [], set()
    for n, m in enumerate(raw_messages, 1):
        where = f"message {n}"
        seq = _need(m, "seq", lambda v: _is_int(v) and v > 0, where)
        if seq in seqs:
            raise _damaged(f"{where}: seq {seq} appears twice")
        seqs.add(seq)
        messages.append(
            Message(
                id=0, conversation_id=cid, seq=seq,
                role=_need(m, "role", lambda v: v in _ROLES, where),
                content=_need(m, "content", _is_str, where),
                tokens=_need(m, "tokens", _opt(_is_int), where),
                created_at=float(_need(m, "created_at", _is_num, where)),
                compacted=_need(m, "compacted", _is_bool, where),
                kind=_need(m, "kind", lambda v: v in _KINDS, where),
                partial=_need(m, "partial", _is_bool, where),
                reason=_need(m, "reason", _opt(_is_str), where),
                replaced=_need(m, "replaced", _is_bool, where),
                in_progress=_need(m, "in_progress", _is_bool, where),
            )
        )  # fmt: skip
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    return record, messages, model


def _header(raw: Any, cid: str, members: dict[str, _Member], notices: list[str]) -> StateHeader | None:
    """The bundled state header, checked against the conversation and the members it names.
    A state format this build cannot read is skipped with a notice (the transcript rebuilds it)."""
    from .state import READABLE_FORMATS, StateHeader

    fmt = _need(raw, "format", _is_int, HEADER)
    if fmt not in READABLE_FORMATS:
        notices.append(f"the bundled KV state has format {fmt}, which this edgechat cannot read: the next turn "
                       "re-reads the transcript")  # fmt: skip
        return None
    checks: dict[str, Callable[[Any], bool]] = {
        "format": _is_int, "conversation_id": _is_str, "model_fingerprint": _is_str, "type_k": _is_str,
        "type_v": _is_str, "flash_attn": _is_bool, "llama_build": _is_str,
        "tokens": lambda v: isinstance(v, list) and all(_is_int(t) for t in v), "payload": _is_str,
        "payload_size": _is_int, "payload_crc32": _is_int, "saved_at": _is_num,
        "checkpoints": lambda v: isinstance(v, list),
    }  # fmt: skip
    known = {f.name for f in fields(StateHeader)}
    values = {k: _need(raw, k, ok, HEADER) for k, ok in checks.items() if k in known}
    values["tokens"] = tuple(values["tokens"])
    cks = []
    for k, ck in enumerate(values["checkpoints"]):
        where = f"{HEADER} checkpoint {k}"
        for key in ("n_tokens", "pos_min", "pos_max", "size", "crc32"):
            _need(ck, key, _is_int, where)
        if _need(ck, "file", _is_str, where) != f"state.ck{k}":
            raise _damaged(f"{where}: file is {ck['file']!r}")
        cks.append({key: ck[key] for key in ("n_tokens", "pos_min", "pos_max", "file", "size", "crc32")})
    values["checkpoints"] = tuple(cks)
    header = StateHeader(**values)
    if header.conversation_id != cid:
        raise _damaged(f"the state belongs to conversation {header.conversation_id!r}, not {cid}")
    if header.payload != PAYLOAD or PAYLOAD not in members:
        raise _damaged(f"the state header names payload {header.payload!r}")
    files = [(PAYLOAD, header.payload_size, header.payload_crc32)] + [(c["file"], c["size"], c["crc32"]) for c in cks]
    for name, size, crc in files:
        got = members.get(name)
        if got is None or got.size != size or got.crc32 != crc:
            raise _damaged(f"{name} does not match the state header")
    return header


# the model on this machine ------------------------------------------------------------------


def _model_here(paths: Paths, spec: str, model: dict[str, Any], cid: str, notices: list[str]) -> tuple[str, bool]:
    """The spec this conversation's next turn should load here, and whether its file is here.

    A registry name or hub file travels as is (a turn pulls it when it is missing). A local path
    that does not exist here is looked for by sha256 among the models this machine knows (its
    fingerprint cache and models dir); failing that, one notice says how to continue.
    """
    from .registry import Registry, parse_spec, resolve_model

    try:
        resolve_model(spec, paths, download=False)
        return spec, True
    except EdgechatError:
        pass
    try:
        parsed = parse_spec(spec)
    except EdgechatError:
        parsed = None
    if parsed is not None and parsed.kind in ("registry", "hub"):
        known = True
        if parsed.kind == "registry":
            try:
                Registry.load(paths).get(parsed.name)
            except EdgechatError:
                known = False
        if known:
            notices.append(
                f"model {spec} is not downloaded here: its next turn pulls it (or `edgechat models pull {spec}`)"
            )
            return spec, False
    found = _by_fingerprint(paths, model)
    if found is not None:
        notices.append(
            f"model {spec} is not on this machine; the conversation now uses {found}, the same file (sha256)"
        )
        return str(found), True
    notices.append(
        f"model {spec} is not on this machine: continue with `edgechat send -c {cid} -m NAME|PATH` "
        "(the same model file resumes from the bundled state, another one re-reads the transcript)"
    )
    return spec, False


def _by_fingerprint(paths: Paths, model: dict[str, Any]) -> Path | None:
    """A local file with the bundle's model sha256: those already hashed here first, then the
    GGUFs of the models dir with the same size (so nothing else is read)."""
    from .state import model_fingerprint

    fingerprint, size = model.get("fingerprint"), model.get("size")
    if not isinstance(fingerprint, str) or not _SHA256.match(fingerprint):
        return None
    candidates: list[Path] = []
    with contextlib.suppress(OSError, ValueError, AttributeError):
        cache = json.loads(paths.fingerprint_cache.read_text())
        candidates += [Path(key.rsplit("|", 2)[0]) for key, digest in cache.items() if digest == fingerprint]
    with contextlib.suppress(OSError):
        candidates += sorted(paths.models_dir.rglob("*.gguf"))
    for path in _unique(candidates):
        try:
            if not path.is_file() or (_is_int(size) and path.stat().st_size != size):
                continue
            if model_fingerprint(path, paths.fingerprint_cache) == fingerprint:
                return path.resolve()
        except OSError:
            continue
    return None


def _unique(paths: Sequence[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
