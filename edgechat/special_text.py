"""Finding special-token text (e.g. "<|im_end|>") inside typed text, cheaply on any vocabulary.

The engine keeps such text out of the control tokens (Engine.chat_tokens). It used to
compile one regex over every special text at the first turn of each process: Gemma 3's
vocabulary has 6,400 of them, and the regex took 0.25-0.35 s to build (issue 12, cold
start). Detection needs no big regex: a small one finds the positions where a special
text could start (its first two characters), and a set lookup per candidate length says
whether one does. The full regex is built only for the rare rewrite (`neutralize`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


class SpecialTexts:
    """The texts of a vocabulary's special tokens (those of two characters or more)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = frozenset(t for t in texts if len(t) > 1)
        by_prefix: dict[str, set[int]] = {}
        for text in self.texts:
            by_prefix.setdefault(text[:2], set()).add(len(text))
        self._lengths = {prefix: sorted(lengths) for prefix, lengths in by_prefix.items()}
        # A lookahead matches at every start position, overlapping ones included.
        alternatives = "|".join(re.escape(p) for p in sorted(self._lengths))
        self._starts = re.compile(f"(?=({alternatives}))") if alternatives else None
        self._pattern: re.Pattern[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.texts)

    def search(self, text: str) -> bool:
        """Whether `text` contains any of the special texts."""
        if self._starts is None:
            return False
        texts, lengths = self.texts, self._lengths
        for m in self._starts.finditer(text):
            i = m.start()
            for n in lengths[m.group(1)]:
                if text[i : i + n] in texts:
                    return True
        return False

    def neutralize(self, text: str) -> str:
        """`text` with a zero-width space after the first character of every special text in it."""
        if not self.texts:
            return text
        if self._pattern is None:
            self._pattern = re.compile(trie_pattern(self.texts))
        return self._pattern.sub(lambda m: m.group(0)[0] + "\u200b" + m.group(0)[1:], text)


def trie_pattern(words: Iterable[str]) -> str:
    """One regex for many literal words, shaped as a trie so a search costs O(text), not O(text x words)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        group = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{group})?" if "" in node else group

    return build(trie)
