"""Conversation export: Markdown for people, JSON for programs (compacted messages included)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from .store import ConversationRecord, Message


def to_markdown(rec: ConversationRecord, messages: Sequence[Message]) -> str:
    lines = [
        f"# {rec.title}",
        "",
        f"- id: `{rec.id}`",
        f"- model: `{rec.model}`",
        f"- created: {datetime.fromtimestamp(rec.created_at).isoformat(timespec='seconds')}",
        "",
    ]
    if rec.settings.get("system_prompt"):
        lines += ["## System", "", str(rec.settings["system_prompt"]), ""]
    for m in messages:
        heading = "Summary of earlier turns" if m.kind == "summary" else m.role.capitalize()
        tags = [
            t
            for t, on in (("compacted", m.compacted), ("replaced", m.replaced), (m.reason or "stopped", m.partial))
            if on
        ]
        lines += [f"## {heading}{' (' + ', '.join(tags) + ')' if tags else ''}", "", m.content, ""]
    return "\n".join(lines)


def to_json(rec: ConversationRecord, messages: Sequence[Message]) -> str:
    return json.dumps({"conversation": asdict(rec), "messages": [asdict(m) for m in messages]}, indent=2) + "\n"
