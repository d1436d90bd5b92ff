"""Spotting a reply that is stuck repeating itself, so it can be ended instead of run to max_tokens.

Small models decoded greedily fall into exact loops ("la femme au martyre, la femme au
martyre, ..."): the same span of tokens over and over. `LoopGuard` watches the tokens of
one reply as they are sampled and says when its tail is one span repeated `repeats` times
in a row. `repeated_words` is the same idea on words, for tests and measurements.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# A span shorter than this many tokens (e.g. "0, " or "ha ") must repeat until the run covers
# SHORT_RUN_FACTOR x repeats x MIN_SPAN tokens: "0, 0, 0, 0" in a list is not a loop, forty are.
MIN_SPAN = 4
SHORT_RUN_FACTOR = 2
MAX_SPAN = 200
_WORD = re.compile(r"\w")
_WORDS = re.compile(r"[\w']+")


class LoopGuard:
    """Fed one token at a time; `add` returns True once the reply's tail is a loop.

    A loop: the last `repeats` x p tokens are one span of p tokens repeated (p is the
    span's smallest period, at least MIN_SPAN tokens, or longer runs for shorter spans),
    and the span holds a word character, so rules of dashes or blank lines never count.
    Cost per token: a scan of up to MAX_SPAN earlier tokens, list compares only where the
    last token recurs; nothing next to a forward pass.
    """

    def __init__(self, repeats: int = 3, text: Callable[[Sequence[int]], str] | None = None) -> None:
        self.repeats = max(2, repeats)
        self.tokens: list[int] = []
        self.text = text
        self.span: tuple[int, ...] = ()  # the repeated span, once caught

    def add(self, token: int) -> bool:
        t = self.tokens
        t.append(token)
        n = len(t)
        for p in range(1, min(MAX_SPAN, n // 2) + 1):
            if t[n - 1 - p] != token:
                continue
            need = self.repeats if p >= MIN_SPAN else -(-SHORT_RUN_FACTOR * self.repeats * MIN_SPAN // p)
            run = need * p
            if run > n or t[n - run + p :] != t[n - run : n - p]:
                continue
            span = t[n - p :]
            if _period(span) != p:
                continue  # a multiple of a shorter span: that span's own rule decides
            if self.text is not None and not _WORD.search(self.text(span)):
                continue
            self.span = tuple(span)
            return True
        return False


def _period(span: Sequence[int]) -> int:
    """The smallest d dividing len(span) such that span is d-periodic."""
    n = len(span)
    for d in range(1, n):
        if n % d == 0 and all(span[i] == span[i - d] for i in range(d, n)):
            return d
    return n


def repeated_words(text: str, min_words: int = 4, times: int = 3) -> str | None:
    """The first span of `min_words`+ words that occurs `times` times in a row (case and
    punctuation ignored), or None. The issue's measure of a looping reply."""
    words = [w.lower() for w in _WORDS.findall(text)]
    n = len(words)
    for p in range(min_words, n // times + 1):
        for i in range(0, n - times * p + 1):
            span = words[i : i + p]
            if all(words[i + k * p : i + (k + 1) * p] == span for k in range(1, times)):
                return " ".join(span)
    return None
