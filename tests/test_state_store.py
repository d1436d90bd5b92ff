"""The state-file format and the transcript store, without a model."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgechat.errors import EdgechatError, StateError
from edgechat.state import StateFiles
from edgechat.store import MIGRATIONS, NewMessage, Store

FIELDS = dict(model_fingerprint="abc", type_k="f16", type_v="f16", flash_attn=False, llama_build="b1")


def _writer(data: bytes):
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


def test_save_then_read_roundtrip(tmp_path):
    sf = StateFiles(tmp_path)
    h = sf.save("c1", [1, 2, 3], _writer(b"payload" * 100), **FIELDS)
    again = sf.read_header("c1")
    assert again == h
    assert sf.verified_payload(again).read_bytes() == b"payload" * 100


def test_a_failed_save_keeps_the_previous_state(tmp_path):
    sf = StateFiles(tmp_path)
    sf.save("c1", [1, 2], _writer(b"old"), **FIELDS)

    def failing(path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(StateError, match="disk space"):
        sf.save("c1", [1, 2, 3], failing, **FIELDS)
    h = sf.read_header("c1")
    assert h.tokens == (1, 2)
    assert sf.verified_payload(h).read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c1.json", h.payload])


def test_a_changed_payload_fails_its_checksum(tmp_path):
    sf = StateFiles(tmp_path)
    h = sf.save("c1", [1], _writer(b"a" * 1000), **FIELDS)
    (tmp_path / h.payload).write_bytes(b"b" * 1000)
    with pytest.raises(StateError, match="checksum"):
        sf.verified_payload(h)


def test_incompatible_headers_name_the_mismatch(tmp_path):
    h = StateFiles(tmp_path).save("c1", [1], _writer(b"x"), **FIELDS)
    ok = dict(fingerprint="abc", type_k="f16", type_v="f16", flash_attn=False)
    h.check_compatible(**ok)  # the llama.cpp build is llama.cpp's to check, when it loads the file
    for key, value, words in [
        ("fingerprint", "zzz", "different model"),
        ("type_k", "q8_0", "f16/f16"),
        ("flash_attn", True, "flash-attention"),
    ]:
        with pytest.raises(StateError, match=words):
            h.check_compatible(**{**ok, key: value})


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_header_bytes_give_a_header_or_a_state_error(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("h")
    (d / "c.json").write_bytes(data)
    with contextlib.suppress(StateError):
        StateFiles(d).read_header("c")


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["format", "tokens", "payload", "conversation_id", "x"]), st.integers() | st.text())
)
def test_json_headers_with_wrong_fields_give_a_state_error(tmp_path_factory, obj):
    d = tmp_path_factory.mktemp("h")
    (d / "c.json").write_text(json.dumps(obj))
    with pytest.raises(StateError):
        StateFiles(d).read_header("c")


def test_store_migrates_and_versions(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT version FROM schema_version").fetchone()[0] >= 1
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_schema_1_database_migrates_and_keeps_its_messages(tmp_path):
    """A database the first release wrote (the first migration only) opens with today's store."""
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    MIGRATIONS[0](db)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO conversations VALUES ('c1', 'old', 'm', '{}', 1.0, 1.0)")
    db.execute(
        "INSERT INTO messages (conversation_id, seq, role, content, created_at, partial) VALUES"
        " ('c1', 0, 'user', 'hi', 1.0, 0), ('c1', 1, 'assistant', 'hel', 1.0, 1)"
    )
    db.execute("COMMIT")
    db.close()
    store = Store(path)
    user, reply = store.messages("c1")
    assert (user.content, reply.content, reply.partial, reply.reason) == ("hi", "hel", True, "stopped")
    store.close()
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_every_migration_is_named_for_what_it_does():
    for number, migration in enumerate(MIGRATIONS, start=1):
        assert re.fullmatch(rf"_m{number}_[a-z_]+", migration.__name__), migration.__name__
        assert migration.__doc__, migration.__name__


def test_store_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 999")
    db.commit()
    with pytest.raises(EdgechatError, match="newer edgechat"):
        Store(path)


def test_a_turn_is_stored_in_one_transaction(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    c = store.create_conversation("m", {})
    store.append_turn(c.id, [NewMessage("user", "hi"), NewMessage("assistant", "hello")])
    with pytest.raises(sqlite3.IntegrityError):
        # A bad row in the middle rolls back the whole turn.
        store.append_turn(c.id, [NewMessage("user", "a"), NewMessage(None, "b")])  # type: ignore[arg-type]
    assert [m.content for m in store.messages(c.id)] == ["hi", "hello"]


def test_every_statement_runs_under_the_store_lock(tmp_path):
    """One connection serves the UI thread and the llama thread: a statement run without the
    lock can land inside the other thread's transaction (the Store docstring)."""
    store = Store(tmp_path / "db.sqlite")
    unlocked: list[str] = []

    class Guarded:
        def __init__(self, db: sqlite3.Connection) -> None:
            self._db = db

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if not store._lock._is_owned():  # type: ignore[attr-defined]
                unlocked.append(sql.split()[0] + " " + sql.split()[-1])
            return self._db.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(self._db, name)

    store.db = Guarded(store.db)  # type: ignore[assignment]
    c = store.create_conversation("m", {}, title="t")
    store.append_turn(c.id, [NewMessage("user", "hi"), NewMessage("assistant", "hello")])
    rows = store.begin_turn(c.id, NewMessage("user", "again"))
    store.write_reply(rows.reply_id, "partial", 1)
    store.finish_turn(c.id, rows, "done", 1, reason=None)
    store.record_turn_cache(c.id, model="m", kv_type="f16", source="state", reused_tokens=5, prefill_tokens=2,
                            prefill_s=0.1, restore_s=0.01)  # fmt: skip
    store.prefill_rate("m", "f16")
    store.update(c.id, model="m2")
    store.new_id()
    store.conversation(c.id[:4])
    store.conversations("t")
    store.latest()
    store.messages(c.id)
    store.rename(c.id, "renamed")
    store.has_conversation(c.id)
    store.cache_uses()
    store.delete_conversation(c.id)
    assert unlocked == []


def test_ids_resolve_by_unique_prefix(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    c = store.create_conversation("m", {}, "first")
    assert store.conversation(c.id[:3]).id == c.id
    with pytest.raises(EdgechatError, match="conversations list"):
        store.conversation("zzzz-none")
    with pytest.raises(EdgechatError):
        store.conversation("")  # an empty id is no prefix of everything
    with pytest.raises(EdgechatError):
        store.conversation("_" * len(c.id))  # LIKE wildcards are taken literally


def test_title_search_takes_percent_and_underscore_literally(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    store.create_conversation("m", {}, "50% off")
    store.create_conversation("m", {}, "5000 off")
    store.create_conversation("m", {}, "a_b")
    store.create_conversation("m", {}, "axb")
    assert [c.title for c in store.conversations("0%")] == ["50% off"]
    assert [c.title for c in store.conversations("a_b")] == ["a_b"]
    assert len(store.conversations("")) == 4


def test_compaction_marks_but_never_deletes(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    c = store.create_conversation("m", {})
    msgs = store.append_turn(c.id, [NewMessage("user", "a"), NewMessage("assistant", "b")])
    after = store.append_turn(
        c.id,
        [NewMessage("system", "summary", kind="summary"), NewMessage("user", "c"), NewMessage("assistant", "d")],
        compact_ids=[m.id for m in msgs],
    )
    assert [m.content for m in after] == ["a", "b", "summary", "c", "d"]
    assert [m.compacted for m in after] == [True, True, False, False, False]


def test_a_second_store_in_one_process_keeps_the_first_ones_lock(tmp_path):
    """POSIX record locks belong to the process: closing any descriptor of the database file drops
    the SHARED lock an open connection holds. Another process closing its own connection would
    then take itself for the last one and delete the WAL under the live writer, whose later
    commits no other process could see (and a crash would lose)."""
    import subprocess
    import sys

    db = tmp_path / "conversations.db"
    first = Store(db)
    second = Store(db)  # the chat UI opens its own beside the runtime's
    count = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM conversations').fetchone()[0])"

    def seen_elsewhere() -> int:
        return int(
            subprocess.run([sys.executable, "-c", count, str(db)], capture_output=True, text=True, check=True).stdout
        )

    try:
        first.create_conversation("m", {}, "one")
        assert seen_elsewhere() == 1  # that reader closes last-but-one: the WAL must survive it
        first.create_conversation("m", {}, "two")
        assert seen_elsewhere() == 2
        assert db.with_name(db.name + "-wal").exists()
    finally:
        second.close()
        first.close()
