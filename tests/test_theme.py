"""Which theme the chat UI starts with."""

from __future__ import annotations

import pytest

from edgechat.tui.theme import DARK, LIGHT, pick_theme, terminal_is_light

THEMES = {"textual-dark", "textual-light", "nord"}


@pytest.mark.parametrize(
    ("colorfgbg", "light"),
    [
        ("0;15", True),
        ("0;7", True),
        ("15;0", False),
        ("7;default;0", False),
        ("12;8", False),
        ("", None),
        ("x;y", None),
    ],
)
def test_colorfgbg_tells_a_light_background(colorfgbg: str, light: bool | None) -> None:
    assert terminal_is_light({"COLORFGBG": colorfgbg}) is light


def test_the_users_choice_beats_the_terminal() -> None:
    light_terminal = {"COLORFGBG": "0;15"}
    assert pick_theme("auto", THEMES, light_terminal) == LIGHT
    assert pick_theme("auto", THEMES, {}) == DARK
    assert pick_theme("dark", THEMES, light_terminal) == DARK
    assert pick_theme("light", THEMES, {}) == LIGHT
    assert pick_theme("nord", THEMES, light_terminal) == "nord"
    assert pick_theme("no-such-theme", THEMES, light_terminal) == LIGHT  # a stale name falls back to auto
