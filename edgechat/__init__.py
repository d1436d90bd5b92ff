"""edgechat: local chat with GGUF models, a persistent per-conversation KV cache, and a memory budget.

    from edgechat import Runtime
    with Runtime(model="smollm2-135m", kv_type="q8_0") as rt:
        c = rt.new_conversation()
        print(c.send("Hello!", max_tokens=64, temperature=0).text)

Imports are lazy so that `import edgechat` stays cheap (llama.cpp loads with the first model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import EdgechatError

__version__ = "0.1.0"
__all__ = ["Conversation", "EdgechatError", "Reply", "Runtime", "TurnStats", "__version__"]

if TYPE_CHECKING:
    from .session import Conversation, Reply, Runtime, TurnStats


def __getattr__(name: str) -> Any:
    if name in ("Runtime", "Conversation", "Reply", "TurnStats"):
        from . import session

        return getattr(session, name)
    raise AttributeError(name)
