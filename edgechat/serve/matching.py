"""Which stored conversation a chat request continues, found by a hash of its message list.

OpenAI clients resend the whole history with every request. A request whose messages
(after its system prompt) start with exactly the messages of a stored conversation, under
the same system prompt, continues that conversation: its KV comes from the live cache,
the RAM cache or the state file, and only the new messages are prefilled.

The key is a SHA-256 over the system prompt and the (role, content) pairs, with content
normalized the way clients tend to alter it on the way back (CRLF, surrounding
whitespace). Keys are computed incrementally, so every prefix of a request costs one
hash update. The index lives in memory, is built from the store at startup, updated after
every turn, and checked against the transcript before use (the transcript is the truth:
another process may have added a turn since). Only the key of a conversation's latest
state is indexed: a request that branches off an earlier turn starts a new conversation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from ..errors import EdgechatError
from ..store import Store

Pair = tuple[str, str]
_SALT = b"edgechat-history-v1\0"


def normalize(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def prefix_keys(system: str, messages: Sequence[Pair]) -> list[str]:
    """keys[k] identifies (system, messages[:k]); len(keys) == len(messages) + 1."""
    h = hashlib.sha256(_SALT + json.dumps(normalize(system)).encode())
    keys = [h.hexdigest()]
    for role, content in messages:
        h.update(b"\0" + json.dumps([role, normalize(content)]).encode())
        keys.append(h.copy().hexdigest())
    return keys


def history_key(system: str, messages: Sequence[Pair]) -> str:
    return prefix_keys(system, messages)[-1]


def same_messages(a: Sequence[Pair], b: Sequence[Pair]) -> bool:
    return len(a) == len(b) and all(
        ra == rb and normalize(ca) == normalize(cb) for (ra, ca), (rb, cb) in zip(a, b, strict=True)
    )


def stored_history(store: Store, cid: str) -> tuple[str, list[Pair]]:
    """A conversation's system prompt and its messages as a client holds them (summaries left out,
    compacted turns kept: compaction changes the context, not the transcript)."""
    record = store.conversation(cid)
    system = str(record.settings.get("system_prompt") or "")
    return system, [(m.role, m.content) for m in store.messages(cid) if m.kind == "message"]


class ConversationIndex:
    """history key ▸ conversation ids, for the conversations that hold at least one message."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_key: dict[str, list[str]] = {}
        self._key_of: dict[str, str] = {}
        self._scanned_at = 0.0

    def rebuild(self) -> None:
        self._by_key.clear()
        self._key_of.clear()
        self._scanned_at = 0.0
        self.scan_recent()

    def scan_recent(self) -> None:
        """Index conversations changed since the last scan (by this process or any other)."""
        records = self.store.conversations()
        newest = self._scanned_at
        for record in records:
            if record.updated_at >= self._scanned_at:
                self.refresh(record.id)
            newest = max(newest, record.updated_at)
        self._scanned_at = newest

    def refresh(self, cid: str) -> None:
        """Re-read one conversation from the store (after a turn, or to drop a deleted one)."""
        self._forget(cid)
        try:
            system, messages = stored_history(self.store, cid)
        except EdgechatError:
            return
        if not messages:
            return
        key = history_key(system, messages)
        self._key_of[cid] = key
        ids = self._by_key.setdefault(key, [])
        ids.insert(0, cid)  # the most recently touched conversation wins a tie

    def _forget(self, cid: str) -> None:
        key = self._key_of.pop(cid, None)
        if key is not None:
            ids = self._by_key.get(key, [])
            if cid in ids:
                ids.remove(cid)
            if not ids:
                self._by_key.pop(key, None)

    def find(self, system: str, history: Sequence[Pair], models: Sequence[str]) -> tuple[str, int] | None:
        """The conversation whose messages are the longest prefix of `history` (and its length),
        among those stored with one of `models`; None when none is."""
        for attempt in range(2):
            found = self._lookup(system, history, models)
            if found is not None or attempt:
                return found
            self.scan_recent()  # another process may have written since
        return None

    def _lookup(self, system: str, history: Sequence[Pair], models: Sequence[str]) -> tuple[str, int] | None:
        keys = prefix_keys(system, history)
        for k in range(len(history), 0, -1):
            for cid in list(self._by_key.get(keys[k], ())):
                try:
                    record = self.store.conversation(cid)
                    stored_system, stored = stored_history(self.store, cid)
                except EdgechatError:
                    self._forget(cid)
                    continue
                if history_key(stored_system, stored) != keys[k]:
                    self.refresh(cid)  # changed behind our back
                    continue
                if record.model in models:
                    return cid, k
        return None
