"""The Textual app: its lifecycle, theme, errors and quit around the one `ChatScreen`.

It is a view over `edgechat.session`: every turn, load and delete goes through `Runtime` and
`Conversation`. Anything that touches llama.cpp (loads, turns, deletes, GPU memory probes)
runs on one long-lived `LlamaThread` and reports back by message, so the UI keeps handling
keys while a model loads or a reply streams. The UI thread reads and writes the transcript
through a `Store` connection of its own; the runtime's belongs to the llama thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import events, on
from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import Input, TextArea

from ..config import save_default
from ..errors import EdgechatError
from ..shutdown import HANDLED
from ..store import Store
from .chat_screen import ChatScreen
from .figures import snapshot_mode
from .llama_thread import LlamaThread
from .messages import CoreNotice, Failed, JobDone
from .theme import pick_theme

if TYPE_CHECKING:
    from ..session import Runtime

MakeRuntime = Callable[[Callable[[str], None]], "Runtime"]
QUIT_WAIT_S = 30.0  # how long a quit waits for a model load (or a stuck llama.cpp call)
SIGNAL_EXIT_S = 20.0  # a stop lands within one token; never hang on a stuck llama thread


def as_error(exc: BaseException, log: Path | None = None) -> EdgechatError:
    """Whatever went wrong, as a message plus a fix the user can act on (never a traceback on screen).

    An unexpected exception's traceback goes to `log`, and the hint names that file.
    """
    if isinstance(exc, EdgechatError):
        return exc
    if isinstance(exc, MemoryError):
        return EdgechatError("out of memory", "use a smaller model, a smaller context, or KV type q8_0 (Ctrl+S)")
    if log is not None:
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as fh:
                fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{''.join(traceback.format_exception(exc))}")
        except OSError:
            log = None
    where = f"the details are in {log}" if log is not None else "run `edgechat --debug chat` to see the details"
    return EdgechatError(f"{type(exc).__name__}: {exc}", where)


class EdgechatApp(App[None]):
    """The chat UI; `make_runtime(on_notice)` builds the Runtime with the user's command-line options."""

    CSS_PATH = "edgechat.tcss"
    TITLE = "edgechat"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]

    def __init__(
        self, make_runtime: MakeRuntime, *, conversation: str | None = None, cont: bool = False, autoload: bool = True
    ) -> None:
        super().__init__()
        self.make_runtime = make_runtime
        self.chat = ChatScreen(conversation=conversation, cont=cont, autoload=autoload)
        self.runtime: Runtime | None = None
        self.store: Store | None = None  # the UI thread's connection to the transcript
        self.llama = LlamaThread(on_error=self._job_failed)
        self._theme_choice = ""
        self.exit_signal: int | None = None  # SIGTERM/SIGHUP that ended the app (exit status 128 + it)

    # lifecycle ------------------------------------------------------------------------------

    def get_default_screen(self) -> ChatScreen:
        return self.chat

    def on_mount(self) -> None:
        """Signals, the runtime, the UI's store and the theme; the chat screen starts once mounted."""
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            for signum in HANDLED:
                loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            rt = self.make_runtime(self._core_notice)
            try:
                store = Store(rt.paths.db_path)
            except BaseException:
                rt.close()
                raise
        except Exception as exc:  # noqa: BLE001 - a bad config must not take the UI down
            self.show_error(self.as_error(exc))
            return
        self.runtime, self.store = rt, store
        self.theme = self._theme_choice = pick_theme(rt.defaults.theme, self.available_themes, os.environ)
        self.theme_changed_signal.subscribe(self, self._remember_theme)

    @on(events.DescendantFocus)
    def _steady_cursor(self, event: events.DescendantFocus) -> None:
        """In a snapshot a focused box's cursor is drawn, whatever the blink's phase when it is taken."""
        if snapshot_mode() and isinstance(event.widget, (TextArea, Input)):
            event.widget.cursor_blink = False

    def on_unmount(self) -> None:
        if self.store is not None:
            self.store.close()

    def _remember_theme(self, theme: Theme) -> None:
        """A theme picked from the command palette is the theme of the next start too."""
        rt = self.runtime
        if rt is None or theme.name == self._theme_choice:
            return
        try:
            save_default(rt.paths, "theme", theme.name)
        except OSError as exc:
            self.show_error(
                EdgechatError(f"could not save the theme: {exc}", "check that the config folder is writable")
            )
            return
        self._theme_choice = theme.name

    def on_llama_thread(self, job: Callable[[], object], then: Callable[[Any, EdgechatError | None], Any]) -> None:
        """Run `job` on the llama thread; `then(result, error)` runs on the UI thread afterwards."""

        def run() -> None:
            try:
                result, error = job(), None
            except BaseException as exc:  # noqa: BLE001 - reported through `then`
                result, error = None, self.as_error(exc)
            self.post_message(JobDone(then, result, error))

        self.llama.submit(run)

    @on(JobDone)
    async def _job_done(self, message: JobDone) -> None:
        outcome = message.then(message.result, message.error)
        if inspect.isawaitable(outcome):
            await outcome

    # errors and notices ---------------------------------------------------------------------

    def as_error(self, exc: BaseException) -> EdgechatError:
        rt = self.runtime
        return as_error(exc, rt.paths.data_dir / "logs" / "chat-errors.log" if rt is not None else None)

    def show_error(self, exc: EdgechatError) -> None:
        self.notify(exc.hint or " ", title=exc.message, severity="error", timeout=12)

    def _core_notice(self, text: str) -> None:
        """Runtime.on_notice: called from the llama thread too, so hop onto the UI thread by message."""
        if threading.get_ident() == self._thread_id:
            self.notify(text, title="note", severity="warning", timeout=8)
        else:
            self.post_message(CoreNotice(text))

    @on(CoreNotice)
    def _notice(self, message: CoreNotice) -> None:
        self.notify(message.text, title="note", severity="warning", timeout=8)

    def _job_failed(self, exc: BaseException) -> None:
        """LlamaThread.on_error, on the llama thread: a job failed outside a turn or a load."""
        self.post_message(Failed(self.as_error(exc)))

    @on(Failed)
    def _failed(self, message: Failed) -> None:
        self.show_error(message.error)

    # quitting -------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        """Ctrl+Q: stop a streaming reply first, so the pipeline stores it and saves the KV state."""
        if self.chat.stop_for_exit(activity="stopping the reply, then quitting…"):
            self.set_timer(SIGNAL_EXIT_S, self.exit)
            return
        self.exit()

    def _on_signal(self, signum: int) -> None:
        """SIGTERM or SIGHUP (a closed terminal, a logout): like Ctrl+Q, but the reply is stored as
        "interrupted" and the exit status is 128 + the signal. A second one leaves at once."""
        if self.exit_signal is not None:
            os._exit(128 + signum)
        self.exit_signal = signum
        if self.chat.stop_for_exit(reason="interrupted"):
            self.set_timer(SIGNAL_EXIT_S, self.exit)
            return
        self.exit()

    def shut_down(self, timeout: float = QUIT_WAIT_S) -> bool:
        """After the UI has gone: end what the llama thread is doing, then close the runtime there.

        A reply stops at its next token and a download at its next chunk; a load cannot be cut
        short. False when the llama thread was still busy after `timeout` seconds.
        """
        if not self.llama.closing and self.chat.turn is not None:
            self.chat.turn.stop.set()
        return self.llama.close(self._close_runtime, timeout)

    def _close_runtime(self) -> None:
        """The llama thread's last job: the runtime then in use (a queued reload may have replaced it)."""
        if self.runtime is not None:
            self.runtime.close()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if screen is self.chat:  # not over a dialog, where the chat's keys are silent too
            for title, help_text, callback in self.chat.commands():
                yield SystemCommand(title, help_text, callback)


def run_app(make_runtime: MakeRuntime, conversation: str | None = None, cont: bool = False) -> int:
    """Entry point for `edgechat chat`: run the UI, then close the runtime on the llama thread.

    Returns the exit status: 0, or 128 + the signal (SIGTERM, SIGHUP) that ended it.
    """
    app = EdgechatApp(make_runtime, conversation=conversation, cont=cont)
    try:
        try:
            app.run()
        except Exception:
            if app.exit_signal is None:
                raise
            # A closed terminal (SIGHUP) can make drawing fail on the way out: the turn is what matters.
    finally:
        # While the reply is stored and the runtime closes, a (second) signal leaves at once.
        for signum in HANDLED:
            signal.signal(signum, lambda s, _f: os._exit(128 + s))
        if not app.shut_down():
            # SQLite and the state files are written atomically: leaving now loses nothing stored.
            sys.stderr.write(f"edgechat: llama.cpp was still busy {QUIT_WAIT_S:.0f} s after quitting; leaving anyway\n")
            sys.stderr.flush()
            os._exit(1)
    return 128 + app.exit_signal if app.exit_signal else 0
