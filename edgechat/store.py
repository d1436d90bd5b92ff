"""The transcript store: the only module that speaks SQL.

The transcript is the source of truth; KV state files are a cache derived from it.
Nothing here deletes a message except an explicit `delete_conversation`.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar

from .config import private_dir
from .errors import ConfigError, EdgechatError


@dataclass(frozen=True)
class Message:
    """One stored message; `compacted` ones stay in the transcript but leave the context."""

    id: int
    conversation_id: str
    seq: int
    role: str
    content: str
    tokens: int | None
    created_at: float
    compacted: bool = False
    kind: str = "message"  # "message" | "summary"
    partial: bool = False  # the reply was stopped before it finished
    # Why a partial reply is partial: "interrupted" (the process died or was told to end),
    # "stopped" (the user stopped it), "error" (generation failed). None when complete.
    reason: str | None = None
    replaced: bool = False  # a regenerated reply (or an edited message): kept, but out of the context
    in_progress: bool = False  # written by a turn that has not finished (or whose process died)


class NewMessage(NamedTuple):
    role: str
    content: str
    tokens: int | None = None
    kind: str = "message"
    partial: bool = False


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    title: str
    model: str
    settings: dict[str, Any] = field(hash=False)
    created_at: float
    updated_at: float
    message_count: int = 0
    token_count: int = 0


P = ParamSpec("P")
R = TypeVar("R")


def damaged_error(path: Path, detail: str) -> ConfigError:
    """The one-line error for a truncated or corrupt database: name the file and the way out."""
    return ConfigError(
        f"the conversation database {path} is damaged ({detail})",
        f"move it aside (mv {path} {path}.damaged) to start a new one, or restore it from a backup;"
        f" `sqlite3 {path} .recover` may rescue its messages",
    )


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """SQLite reports a damaged file only when a query reaches a bad page: turn that, wherever it
    happens, into the one-line error (a busy or locked database is not damage)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # OperationalError, IntegrityError...: not damage
                raise
            store = args[0]
            assert isinstance(store, Store)
            raise damaged_error(store.path, str(exc)) from exc

    return wrapper


def _like_escape(text: str) -> str:
    """Match `text` literally inside a LIKE pattern: % and _ in a title or id are not wildcards."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT the migration's transaction half-way: run statement by statement.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m1_conversations_and_messages(db: sqlite3.Connection) -> None:
    """The first schema: conversations and their messages, a message's place kept by `seq`."""
    _script(
        db,
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            model TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            tokens INTEGER,
            created_at REAL NOT NULL,
            compacted INTEGER NOT NULL DEFAULT 0,
            kind TEXT NOT NULL DEFAULT 'message',
            partial INTEGER NOT NULL DEFAULT 0,
            UNIQUE (conversation_id, seq)
        );
        CREATE INDEX messages_by_conversation ON messages (conversation_id, seq);
        """,
    )


def _m2_turn_progress_and_replaced_replies(db: sqlite3.Connection) -> None:
    """Crash-safe turns and regenerate: a turn's rows are written before and while it runs."""
    _script(
        db,
        """
        ALTER TABLE messages ADD COLUMN reason TEXT;
        ALTER TABLE messages ADD COLUMN replaced INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE messages ADD COLUMN in_progress INTEGER NOT NULL DEFAULT 0;
        UPDATE messages SET reason = 'stopped' WHERE partial = 1
        """,
    )


def _m3_turn_cache(db: sqlite3.Connection) -> None:
    """Per turn: what supplied the KV cache and what the prefill cost, for `edgechat cache stats`
    (restores by source, tokens not prefilled again, this machine's measured prefill rate)."""
    _script(
        db,
        """
        CREATE TABLE turn_cache (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            at REAL NOT NULL,
            model TEXT NOT NULL,
            kv_type TEXT NOT NULL,
            source TEXT NOT NULL,
            reused_tokens INTEGER NOT NULL,
            prefill_tokens INTEGER NOT NULL,
            prefill_s REAL NOT NULL,
            restore_s REAL NOT NULL
        );
        CREATE INDEX turn_cache_by_model ON turn_cache (model, kv_type, id)
        """,
    )


# Numbered migrations: append, never edit one that has shipped.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m1_conversations_and_messages,
    _m2_turn_progress_and_replaced_replies,
    _m3_turn_cache,
]
# A prefill shorter than this measures overheads more than the rate.
RATE_MIN_TOKENS = 64
RATE_WINDOW = 50  # the latest turns a prefill rate is measured over


@dataclass(frozen=True)
class CacheUse:
    """One group of turns in `edgechat cache stats`: what supplied the cache and what it saved."""

    model: str
    kv_type: str
    source: str
    turns: int
    reused_tokens: int
    prefill_tokens: int
    restore_s: float


class Store:
    """Conversations and messages in one SQLite file (WAL, one transaction per turn).

    One connection serves every thread (the UI thread renames while the llama thread
    appends a turn), so every use of it holds `_lock`: a transaction from start to
    COMMIT, a read until its rows are fetched. Without it one thread's BEGIN or COMMIT
    lands inside another's transaction and a finished reply is lost.
    The file is created readable by this user only (0600; SQLite gives its -wal and
    -shm files the same mode), in a data directory created 0700: transcripts are private.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        private_dir(path.parent)
        if path.exists() and path.stat().st_size == 0 and not _nonempty(path.with_name(path.name + "-wal")):
            # SQLite would take an empty file for a new database and hide the loss: say so instead.
            raise damaged_error(path, "the file is empty")
        try:
            _private_file(path)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError:
                raise damaged_error(path, str(exc)) from exc
            raise ConfigError(
                f"conversation database {path} cannot be opened: {exc}",
                "check that the folder is writable and not on a network share",
            ) from exc

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run one read and fetch all its rows under the connection lock."""
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        with self.transaction():
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self.db.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if current > len(MIGRATIONS):
                raise ConfigError(
                    f"{self.path} was written by a newer edgechat (schema {current})",
                    "upgrade edgechat",
                )
            for migration in MIGRATIONS[current:]:
                migration(self.db)
            if row is None:
                self.db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
            else:
                self.db.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception).

        Holds the connection lock throughout, so use the yielded connection only inside
        the `with` block; transactions from other threads wait for this one.
        """
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")

    # conversations -------------------------------------------------------------------

    @_guarded
    def create_conversation(self, model: str, settings: dict[str, Any], title: str = "") -> ConversationRecord:
        now = time.time()
        with self.transaction() as db:
            while True:
                cid = secrets.token_hex(4)
                if not db.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone():
                    break
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                (cid, title or "New conversation", model, json.dumps(settings), now, now),
            )
        return self.conversation(cid)

    _SUMMARY_SQL = """
        SELECT c.*, COUNT(m.id) AS message_count,
               COALESCE(SUM(CASE WHEN m.compacted = 0 THEN m.tokens ELSE 0 END), 0) AS token_count
        FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id
    """

    @_guarded
    def conversation(self, id_or_prefix: str) -> ConversationRecord:
        """Look one up by id or a unique id prefix (as git does for commits)."""
        rows = (
            self._rows(
                self._SUMMARY_SQL + " WHERE c.id LIKE ? ESCAPE '\\' GROUP BY c.id",
                (_like_escape(id_or_prefix.strip()) + "%",),
            )
            if id_or_prefix.strip()
            else []
        )
        exact = [r for r in rows if r["id"] == id_or_prefix]
        if exact:
            rows = exact
        if not rows:
            raise EdgechatError(f"no conversation {id_or_prefix!r}", "list them with `edgechat conversations list`")
        if len(rows) > 1:
            raise EdgechatError(f"{id_or_prefix!r} matches {len(rows)} conversations", "give more of the id")
        return _record(rows[0])

    @_guarded
    def conversations(self, search: str = "") -> list[ConversationRecord]:
        rows = self._rows(
            self._SUMMARY_SQL + " WHERE c.title LIKE ? ESCAPE '\\' GROUP BY c.id ORDER BY c.updated_at DESC",
            (f"%{_like_escape(search)}%",),
        )
        return [_record(r) for r in rows]

    def latest(self) -> ConversationRecord | None:
        items = self.conversations()
        return items[0] if items else None

    @_guarded
    def rename(self, cid: str, title: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, cid))

    @_guarded
    def update(self, cid: str, *, model: str | None = None, settings: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            if model is not None:
                db.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, cid))
            if settings is not None:
                db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (json.dumps(settings), cid))

    @_guarded
    def delete_conversation(self, cid: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (cid,))
            db.execute("DELETE FROM conversations WHERE id = ?", (cid,))

    @_guarded
    def has_conversation(self, cid: str) -> bool:
        """Whether this exact id is taken (no prefix matching)."""
        return bool(self._rows("SELECT 1 FROM conversations WHERE id = ?", (cid,)))

    @_guarded
    def import_conversation(self, record: ConversationRecord, messages: Sequence[Message]) -> None:
        """Store a whole conversation brought from elsewhere (a bundle) in one transaction, every
        message with its seq and flags; the row ids are this store's own. An id already here is
        refused, never overwritten."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM conversations WHERE id = ?", (record.id,)).fetchone():
                raise EdgechatError(f"conversation {record.id} already exists", "import it under a fresh id")
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.title, record.model, json.dumps(record.settings), record.created_at,
                 record.updated_at),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO messages (conversation_id, seq, role, content, tokens, created_at, compacted, kind,"
                " partial, reason, replaced, in_progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (record.id, m.seq, m.role, m.content, m.tokens, m.created_at, int(m.compacted), m.kind,
                     int(m.partial), m.reason, int(m.replaced), int(m.in_progress))
                    for m in messages
                ],
            )  # fmt: skip

    # messages ------------------------------------------------------------------------

    @_guarded
    def messages(self, cid: str) -> list[Message]:
        rows = self._rows("SELECT * FROM messages WHERE conversation_id = ? ORDER BY seq", (cid,))
        return [
            Message(
                id=r["id"],
                conversation_id=r["conversation_id"],
                seq=r["seq"],
                role=r["role"],
                content=r["content"],
                tokens=r["tokens"],
                created_at=r["created_at"],
                compacted=bool(r["compacted"]),
                kind=r["kind"],
                partial=bool(r["partial"]),
                reason=r["reason"],
                replaced=bool(r["replaced"]),
                in_progress=bool(r["in_progress"]),
            )  # fmt: skip
            for r in rows
        ]

    @_guarded
    def append_turn(
        self,
        cid: str,
        new: Sequence[NewMessage],
        *,
        compact_ids: Sequence[int] = (),
        title: str | None = None,
    ) -> list[Message]:
        """Store a whole turn atomically: compaction marks, summary, user message, reply."""
        now = time.time()
        with self.transaction() as db:
            if compact_ids:
                db.executemany(
                    "UPDATE messages SET compacted = 1 WHERE id = ? AND conversation_id = ?",
                    [(mid, cid) for mid in compact_ids],
                )
            row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?", (cid,)).fetchone()
            seq = row[0]
            for m in new:
                seq += 1
                db.execute(
                    "INSERT INTO messages (conversation_id, seq, role, content, tokens, created_at, kind, partial)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (cid, seq, m.role, m.content, m.tokens, now, m.kind, int(m.partial)),
                )
            if title is not None:
                db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, cid))
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
        return self.messages(cid)

    # turns written as they run -------------------------------------------------------------

    @_guarded
    def begin_turn(
        self,
        cid: str,
        user: NewMessage | None,
        *,
        replace_ids: Sequence[int] = (),
        create: tuple[str, dict[str, Any], str] | None = None,
        title: str | None = None,
    ) -> TurnRows:
        """Commit a turn's user message and an empty reply row before any model work starts.

        The reply row is born `partial` with the reason "interrupted": if the process dies from
        here on, that is what the transcript truthfully says. Rows of an earlier turn whose
        process died are settled (the caller holds the conversation lock, so no one else is
        writing them). `replace_ids` (regenerate, edit) are marked replaced in the same commit.
        `create` = (model, settings, title) makes the conversation itself, with its first turn.
        A seq is left free before the user message for a summary this turn may produce.
        """
        now = time.time()
        with self.transaction() as db:
            if create is not None:
                model, settings, new_title = create
                db.execute(
                    "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                    (cid, new_title or "New conversation", model, json.dumps(settings), now, now),
                )
            db.execute("UPDATE messages SET in_progress = 0 WHERE conversation_id = ? AND in_progress = 1", (cid,))
            if replace_ids:
                db.executemany(
                    "UPDATE messages SET replaced = 1 WHERE id = ? AND conversation_id = ?",
                    [(mid, cid) for mid in replace_ids],
                )
            row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?", (cid,)).fetchone()
            seq = row[0] + 1  # the free slot for a summary
            user_id = None
            if user is not None:
                seq += 1
                user_id = self._insert(db, cid, seq, user, now, in_progress=True)
            seq += 1
            reply = NewMessage("assistant", "", tokens=0, partial=True)
            reply_id = self._insert(db, cid, seq, reply, now, in_progress=True, reason="interrupted")
            if title is not None:
                db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, cid))
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
        return TurnRows(user_id=user_id, reply_id=reply_id, summary_seq=row[0] + 1)

    @_guarded
    def write_reply(self, reply_id: int, content: str, tokens: int) -> None:
        """The streamed reply so far: one small UPDATE, called at bounded intervals while it streams."""
        with self.transaction() as db:
            db.execute("UPDATE messages SET content = ?, tokens = ? WHERE id = ?", (content, tokens, reply_id))

    @_guarded
    def finish_turn(
        self,
        cid: str,
        rows: TurnRows,
        content: str,
        tokens: int,
        *,
        reason: str | None,
        compact_ids: Sequence[int] = (),
        summary: NewMessage | None = None,
        unreplace_ids: Sequence[int] = (),
        drop_reply: bool = False,
    ) -> None:
        """Close a turn in one commit: the final reply (partial with `reason`, or complete when
        None), the compaction it did, and the end of the in-progress mark.

        `drop_reply` removes this turn's own empty reply row and gives `unreplace_ids` back
        their place (a regenerate stopped before its first token changes nothing).
        """
        from . import testhooks

        now = time.time()
        with self.transaction() as db:
            if drop_reply:
                db.execute("DELETE FROM messages WHERE id = ? AND content = ''", (rows.reply_id,))
            else:
                db.execute(
                    "UPDATE messages SET content = ?, tokens = ?, partial = ?, reason = ?, in_progress = 0"
                    " WHERE id = ?",
                    (content, tokens, int(reason is not None), reason, rows.reply_id),
                )
            if unreplace_ids:
                db.executemany(
                    "UPDATE messages SET replaced = 0 WHERE id = ? AND conversation_id = ?",
                    [(mid, cid) for mid in unreplace_ids],
                )
            if rows.user_id is not None:
                db.execute("UPDATE messages SET in_progress = 0 WHERE id = ?", (rows.user_id,))
            if compact_ids:
                db.executemany(
                    "UPDATE messages SET compacted = 1 WHERE id = ? AND conversation_id = ?",
                    [(mid, cid) for mid in compact_ids],
                )
            if summary is not None:
                free = db.execute(
                    "SELECT 1 FROM messages WHERE conversation_id = ? AND seq = ?", (cid, rows.summary_seq)
                ).fetchone()
                if free is None:
                    seq = rows.summary_seq
                else:  # a regenerate: no slot was left before its (older) user message
                    seq = db.execute(
                        "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?", (cid,)
                    ).fetchone()[0]
                self._insert(db, cid, seq, summary, now)
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
            testhooks.kill_point("commit")

    @staticmethod
    def _insert(
        db: sqlite3.Connection,
        cid: str,
        seq: int,
        m: NewMessage,
        now: float,
        *,
        in_progress: bool = False,
        reason: str | None = None,
    ) -> int:
        cur = db.execute(
            "INSERT INTO messages (conversation_id, seq, role, content, tokens, created_at, kind, partial,"
            " reason, in_progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cid, seq, m.role, m.content, m.tokens, now, m.kind, int(m.partial), reason, int(in_progress)),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    # what the KV cache saved ------------------------------------------------------------------

    def record_turn_cache(
        self, cid: str, *, model: str, kv_type: str, source: str, reused_tokens: int, prefill_tokens: int,
        prefill_s: float, restore_s: float,
    ) -> None:  # fmt: skip
        """One finished turn's cache figures. Best effort: the turn is already stored, and a busy
        or read-only database must not fail it for a statistic."""
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO turn_cache (conversation_id, at, model, kv_type, source, reused_tokens,"
                    " prefill_tokens, prefill_s, restore_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (cid, time.time(), model, kv_type, source, reused_tokens, prefill_tokens, prefill_s, restore_s),
                )
        except sqlite3.Error:
            pass

    @_guarded
    def prefill_rate(self, model: str, kv_type: str) -> float | None:
        """Tokens per second this machine prefilled for `model` with this KV type, over its latest
        turns that prefilled at least RATE_MIN_TOKENS; None before any such turn."""
        try:
            row = self._rows(
                "SELECT SUM(prefill_tokens), SUM(prefill_s) FROM (SELECT prefill_tokens, prefill_s FROM turn_cache"
                " WHERE model = ? AND kv_type = ? AND prefill_tokens >= ? AND prefill_s > 0 ORDER BY id DESC LIMIT ?)",
                (model, kv_type, RATE_MIN_TOKENS, RATE_WINDOW),
            )[0]
        except sqlite3.OperationalError:  # busy: a statistic is not worth failing a stored turn
            return None
        return row[0] / row[1] if row[0] and row[1] else None

    @_guarded
    def cache_uses(self) -> list[CacheUse]:
        rows = self._rows(
            "SELECT model, kv_type, source, COUNT(*), SUM(reused_tokens), SUM(prefill_tokens), SUM(restore_s)"
            " FROM turn_cache GROUP BY model, kv_type, source ORDER BY model, kv_type, source"
        )
        return [CacheUse(*tuple(r)) for r in rows]

    def new_id(self) -> str:
        """A fresh conversation id (the row itself may be created later, with the first turn)."""
        while True:
            cid = secrets.token_hex(4)
            if not self._rows("SELECT 1 FROM conversations WHERE id = ?", (cid,)):
                return cid


class TurnRows(NamedTuple):
    """The rows `begin_turn` wrote: the user message (None for a regenerate) and the reply."""

    user_id: int | None
    reply_id: int
    summary_seq: int


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if missing, or take group/other access away.

    An existing file is never opened here: POSIX record locks belong to the process, so closing
    any descriptor of it would drop the lock of a connection this process already holds, and
    another process could then delete the WAL under that connection.
    """
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        with suppress(OSError):
            os.chmod(path, 0o600)
    except OSError:
        pass  # sqlite3.connect reports an unusable path in its own words


def _record(r: sqlite3.Row) -> ConversationRecord:
    try:
        settings = json.loads(r["settings"])
    except json.JSONDecodeError:
        settings = {}
    return ConversationRecord(
        id=r["id"], title=r["title"], model=r["model"], settings=settings,
        created_at=r["created_at"], updated_at=r["updated_at"],
        message_count=r["message_count"], token_count=r["token_count"] or 0,
    )  # fmt: skip
