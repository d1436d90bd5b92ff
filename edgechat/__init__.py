"""edgechat: local chat with GGUF models, a persistent per-conversation KV cache, and a memory budget.

    from edgechat import Runtime
    with Runtime(model="smollm2-135m", kv_type="q8_0") as rt:
        c = rt.new_conversation()
        print(c.send("Hello!", max_tokens=64, temperature=0).text)

A process told to end (SIGTERM, SIGHUP) keeps the turn: see `edgechat.shutdown.stop_on_signals`.

Imports are lazy so that `import edgechat` stays cheap (llama.cpp loads with the first model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import EdgechatError

__version__ = "0.1.0"
__all__ = [
    "Conversation", "EdgechatError", "Reply", "Runtime", "StopEvent", "TurnStats", "__version__", "stop_on_signals",
]  # fmt: skip

if TYPE_CHECKING:
    from .session import Conversation, Reply, Runtime, TurnStats
    from .shutdown import StopEvent, stop_on_signals


def __getattr__(name: str) -> Any:
    if name in ("StopEvent", "stop_on_signals"):
        from . import shutdown

        return getattr(shutdown, name)
    if name in ("Runtime", "Conversation", "Reply", "TurnStats"):
        from . import session

        return getattr(session, name)
    raise AttributeError(name)
