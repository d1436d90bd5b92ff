"""The transcript store: the only module that speaks SQL.

The transcript is the source of truth; KV state files are a cache derived from it.
Nothing here deletes a message except an explicit `delete_conversation`.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class NewMessage:
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


def _like_escape(text: str) -> str:
    """Match `text` literally inside a LIKE pattern: % and _ in a title or id are not wildcards."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT the migration's transaction half-way: run statement by statement.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m1(db: sqlite3.Connection) -> None:
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


# Numbered migrations: append, never edit one that has shipped.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1]


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
        try:
            _private_file(path)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"conversation database {path} cannot be opened: {exc}",
                "restore it from a backup, or move it aside to start afresh",
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

    def conversations(self, search: str = "") -> list[ConversationRecord]:
        rows = self._rows(
            self._SUMMARY_SQL + " WHERE c.title LIKE ? ESCAPE '\\' GROUP BY c.id ORDER BY c.updated_at DESC",
            (f"%{_like_escape(search)}%",),
        )
        return [_record(r) for r in rows]

    def latest(self) -> ConversationRecord | None:
        items = self.conversations()
        return items[0] if items else None

    def rename(self, cid: str, title: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, cid))

    def update(self, cid: str, *, model: str | None = None, settings: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            if model is not None:
                db.execute("UPDATE conversations SET model = ? WHERE id = ?", (model, cid))
            if settings is not None:
                db.execute("UPDATE conversations SET settings = ? WHERE id = ?", (json.dumps(settings), cid))

    def delete_conversation(self, cid: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (cid,))
            db.execute("DELETE FROM conversations WHERE id = ?", (cid,))

    # messages ------------------------------------------------------------------------

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
            )  # fmt: skip
            for r in rows
        ]

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


def _private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if missing, or take group/other access away."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
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
