"""The one error family the core raises: every error carries the fix."""

from __future__ import annotations


class EdgechatError(Exception):
    """A problem the user can act on: `message` says what, `hint` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class ModelError(EdgechatError):
    """A model file is missing, unreadable, or not a usable GGUF."""


class ConfigError(EdgechatError):
    """models.toml, config.toml or an option is invalid."""


class StateError(EdgechatError):
    """A saved KV state cannot be used (the transcript is still intact)."""


class BudgetError(EdgechatError):
    """A turn cannot fit the memory budget or the context."""


class BusyError(EdgechatError):
    """Another process holds the conversation."""


class Cancelled(EdgechatError):
    """Generation was stopped by the user."""
