"""The `edgechat` commands, one module per command group, each with `register(app)`.

How a command gets onto the command line (the pattern of simonw/llm's `register_commands`):

1. Write `edgechat/commands/NAME.py` with its commands as plain functions decorated with
   `@guarded` (from `.common`: EdgechatError becomes `error: message — hint`, exit 1) and a

       def register(app: typer.Typer) -> None:
           app.command("name")(command)            # a top-level command, or
           app.add_typer(sub_app, name="group")     # a group of subcommands, or
           group(app, "conversations").command("import")(import_)  # a subcommand of an existing group

2. Add `"NAME",` to `COMMANDS` in `edgechat/cli.py` (one line; the order is the order in `--help`
   within commands and within groups, and a module adding to a group comes after the group's).

Name groups in `add_typer(..., name=...)`: a run builds only the command or group its
arguments name (`cli.for_args`), found by that name. An option shared by several commands
(say `--rpc`) is one `Annotated` type in `.common`, next to `ModelOpt`, plus its field in
`engine_options` when it reaches the engine.

Keep module top levels light (typer, `.common`, the standard library): every `edgechat`
process imports every command module, so heavy imports (the runtime, rich, the registry)
go inside the command functions. Shared option types, the engine options builder
(`engine_options`), `runtime`, `paths`, `store`, `notice`, `fail` and `flash` live in
`.common`; command modules import from there, never from `edgechat.cli`.
"""
