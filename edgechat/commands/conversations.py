"""`edgechat conversations list|show|export|import|rename|delete`: the saved conversations, no model loaded.

Other modules add subcommands to this group with `group(app, "conversations")` (see
edgechat/commands/__init__.py); they come after this module in cli.COMMANDS.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EdgechatError
from .common import JsonOpt, guarded, notice, paths, store


def register(app: typer.Typer) -> None:
    conversations_app = typer.Typer(
        help="List, show, export, import, rename and delete saved conversations.", no_args_is_help=True
    )
    conversations_app.command("list")(conversations_list)
    conversations_app.command("show")(conversations_show)
    conversations_app.command("export")(conversations_export)
    conversations_app.command("import")(conversations_import)
    conversations_app.command("rename")(conversations_rename)
    conversations_app.command("delete")(conversations_delete)
    app.add_typer(conversations_app, name="conversations")


def _when(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@guarded
def conversations_list(
    search: Annotated[str, typer.Option("--search", "-s", help="Only titles containing this.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Saved conversations, most recent first."""
    items = store().conversations(search)
    if json_out:
        print(json.dumps([asdict(c) for c in items]))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "title", "model", "messages", "tokens", "updated", box=None)
    for c in items:
        table.add_row(c.id, c.title, c.model, str(c.message_count), str(c.token_count), _when(c.updated_at))
    Console().print(table if items else 'no conversations yet: edgechat send --new "hello"')


@guarded
def conversations_show(conversation_id: str, json_out: JsonOpt = False) -> None:
    """Every message of a conversation, compacted ones included."""
    db = store()
    rec = db.conversation(conversation_id)
    msgs = db.messages(rec.id)
    if json_out:
        print(json.dumps({"conversation": asdict(rec), "messages": [asdict(m) for m in msgs]}))
        return
    print(f"# {rec.title}  ({rec.id}, {rec.model})")
    for m in msgs:
        tags = [
            t
            for t, on in (
                ("summary", m.kind == "summary"), ("compacted", m.compacted), ("replaced", m.replaced),
                (m.reason or "stopped", m.partial),
            )
            if on
        ]  # fmt: skip
        print(f"\n[{m.role}{' · ' + ', '.join(tags) if tags else ''}]\n{m.content}")


@guarded
def conversations_export(
    conversation_id: str,
    fmt: Annotated[str, typer.Option("--format", "-f", help="md or json.")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle", help="Write one portable file (transcript, settings, KV state) for `conversations import`."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a conversation to Markdown or JSON, or as a bundle another machine imports."""
    from ..export import to_json, to_markdown

    if bundle is not None or json_out:
        _bundle_command("export", conversation_id, bundle, output is None, json_out)
        return

    db = store()
    rec = db.conversation(conversation_id)
    msgs = db.messages(rec.id)
    if fmt not in ("md", "json"):
        raise EdgechatError(f"unknown format {fmt!r}", "use --format md or --format json")
    text = to_markdown(rec, msgs) if fmt == "md" else to_json(rec, msgs)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise EdgechatError(
                f"cannot write {output}: {exc.strerror or exc}", "check that its directory exists and is writable"
            ) from None
        print(f"wrote {output}", file=sys.stderr)


@guarded
def conversations_import(
    file: Annotated[Path, typer.Argument(help="A bundle from `conversations export ID --bundle FILE`.")],
    as_new: Annotated[
        bool, typer.Option("--as-new", help="Import it under a fresh id (a copy beside the one here).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore a conversation from a bundle; its next turn resumes from the bundled KV state when
    this machine has the same model file, llama.cpp build and KV types (else from the transcript)."""
    _bundle_command("import", str(file), None, as_new, json_out)


def _bundle_command(verb: str, target: str, dest: Path | None, flag: bool, json_out: bool) -> None:
    """`conversations export ID --bundle FILE` (flag: no -o given) and `conversations import FILE`
    (flag: --as-new): the library does the work (bundle.py); this prints its result."""
    from typing import Any

    from ..bundle import export_bundle, import_bundle

    where = paths()
    r: Any
    if verb == "export":
        if dest is None:
            raise EdgechatError("--json reports a bundle export", "add --bundle FILE (-f json exports the transcript)")
        if not flag:
            raise EdgechatError("--bundle FILE and -o FILE both name the output", "use one of them")
        r = export_bundle(where, target, dest)
        line = f"wrote {r.path}: {r.messages} messages"
    else:
        r = import_bundle(where, Path(target), as_new=flag)
        line = f"imported {r.conversation_id} ({r.title}): {r.messages} messages"
    line += f", KV state {r.state_bytes / 2**20:.1f} MiB" if r.state else ", no KV state"
    for msg in r.notices:
        notice(msg)
    print(json.dumps(asdict(r)) if json_out else line, file=sys.stdout if json_out or verb == "import" else sys.stderr)


@guarded
def conversations_rename(conversation_id: str, title: str) -> None:
    """Give a conversation a new title."""
    db = store()
    rec = db.conversation(conversation_id)
    db.rename(rec.id, title)


@guarded
def conversations_delete(
    conversation_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a conversation, its messages and its saved state."""
    from ..lock import ConversationLock
    from ..state import StateFiles

    db = store()
    rec = db.conversation(conversation_id)
    if (
        not yes
        and sys.stdin.isatty()
        and not typer.confirm(f"delete {rec.id} ({rec.title!r}, {rec.message_count} messages)?")
    ):
        raise typer.Exit(1)
    where = paths()
    with ConversationLock(where.data_dir / "locks", rec.id, timeout_s=5) as lock:
        db.delete_conversation(rec.id)
        StateFiles(where.states_dir).delete(rec.id)
        lock.discard()
    print(f"deleted {rec.id}", file=sys.stderr)
