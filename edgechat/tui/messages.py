"""What the llama thread tells the UI: each a message, posted from that thread, handled on the UI's.

Textual delivers a message posted from another thread on the UI thread, in order; that is the
only way work on the llama thread reaches the widgets (a streaming reply's text is the
exception: it goes through the view's own buffer, see `MessageView.feed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from ..errors import EdgechatError
    from ..memory import MemorySnapshot
    from ..pressure import Reading
    from ..session import Reply
    from .chat_screen import ActiveTurn


@dataclass
class CoreNotice(Message):
    """Something the runtime wants the user to know (`Runtime.on_notice`), e.g. a state not used."""

    text: str


@dataclass
class Failed(Message):
    """A llama thread job failed outside any turn or load (those report their own failures)."""

    error: EdgechatError


@dataclass
class TurnEvent(Message):
    """A step of the turn pipeline: "restored", "compacted", "stored", or "first_token"."""

    turn: ActiveTurn
    kind: str
    data: Any


@dataclass
class TurnFinished(Message):
    """The turn is over: its reply (stopped replies too), or the error that ended it."""

    turn: ActiveTurn
    reply: Reply | None
    kv_bytes: int
    error: EdgechatError | None


@dataclass
class ModelLoaded(Message):
    """A load (or a reload with new engine settings) ended, after `seconds`."""

    seconds: float
    kv_bytes: int
    error: EdgechatError | None


@dataclass
class LoadProgress(Message):
    """Bytes of a registry model downloaded so far, before its load."""

    spec: str
    done: int
    total: int | None


@dataclass
class JobDone(Message):
    """A job queued with `EdgechatApp.on_llama_thread` ended: `then(result, error)` runs on the UI thread."""

    then: Callable[[Any, EdgechatError | None], Any]
    result: Any
    error: EdgechatError | None


@dataclass
class MemoryProbed(Message):
    """RAM and GPU memory, as the periodic probe read them, and a re-plan it caused."""

    snapshot: MemorySnapshot
    reading: Reading | None = None  # free RAM against the floor (issue 18)
    context: tuple[int, str, int] | None = None  # (limit, KV type, KV bytes) after a re-plan
