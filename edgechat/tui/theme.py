"""Which Textual theme the chat UI starts with: the user's choice, else one that suits the terminal."""

from __future__ import annotations

from collections.abc import Collection, Mapping

LIGHT = "textual-light"
DARK = "textual-dark"


def terminal_is_light(environ: Mapping[str, str]) -> bool | None:
    """What COLORFGBG ("fg;bg", set by rxvt, Konsole, iTerm2 and others) says; None when unset."""
    value = environ.get("COLORFGBG", "")
    bg = value.rsplit(";", 1)[-1]
    if not bg.isdigit():
        return None
    # ANSI colours 7 (white) and 15 (bright white) are light backgrounds; the rest of 0-15 are dark.
    return int(bg) in (7, 15)


def pick_theme(setting: str, available: Collection[str], environ: Mapping[str, str]) -> str:
    """`setting` is auto, light, dark or a theme name; an unknown name falls back to auto."""
    if setting == "light":
        return LIGHT
    if setting == "dark":
        return DARK
    if setting != "auto" and setting in available:
        return setting
    return LIGHT if terminal_is_light(environ) else DARK
