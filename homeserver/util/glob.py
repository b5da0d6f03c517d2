"""Globs (``*`` any run of characters, ``?`` one character) matched without backtracking.

A glob turned into a regular expression of ``.*`` runs (``*a*a*b`` -> ``.*a.*a.*b``)
backtracks polynomially in the text's length, to the power of its stars: a server ACL
pattern against a 255-character server name, or a push rule pattern against a 64 KB
message body, stalled the event loop for seconds to hours. Here the pattern is cut at
its stars into pieces of fixed length (literal characters and ``?``), each a regular
expression without any repetition, and the pieces are found leftmost in turn: for a match
of the whole text (``fullmatch``), the first piece anchors at the start and the last at the
end; for a match at word boundaries anywhere (``search_words``, as push rules match
``content.body``), the earliest start is the best one, because finding the pieces leftmost
from an earlier start never ends later. Work is at most the text's length times the
pattern's, per piece.
"""

from __future__ import annotations

import re
from functools import lru_cache


def _piece(text: str) -> str:
    return "".join("." if c == "?" else re.escape(c) for c in text)


class Glob:
    __slots__ = ("_first_bounded", "_last_bounded", "_lengths", "_pieces", "_whole_word", "starred")

    def __init__(self, pattern: str, *, ignore_case: bool = True) -> None:
        flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        parts = pattern.split("*")
        self.starred = len(parts) > 1
        self._pieces = [re.compile(_piece(p), flags) for p in parts]
        self._lengths = [len(p) for p in parts]
        self._whole_word = re.compile(rf"(?<!\w){_piece(parts[0])}(?!\w)", flags)
        self._first_bounded = re.compile(rf"(?<!\w){_piece(parts[0])}", flags)
        self._last_bounded = re.compile(rf"{_piece(parts[-1])}(?!\w)", flags)

    def fullmatch(self, text: str) -> bool:
        """Whether the whole of ``text`` matches."""
        if not self.starred:
            return self._pieces[0].fullmatch(text) is not None
        n = len(text)
        first_len, last_len = self._lengths[0], self._lengths[-1]
        if first_len + last_len > n:
            return False
        if self._pieces[0].match(text, 0, first_len) is None or self._pieces[-1].match(text, n - last_len) is None:
            return False
        return self._middle(text, first_len, n - last_len) is not None

    def search_words(self, text: str) -> bool:
        """Whether some part of ``text`` that starts and ends at word boundaries matches."""
        if not self.starred:
            return self._whole_word.search(text) is not None
        start = self._first_bounded.search(text)
        if start is None:
            return False
        position = self._middle(text, start.end(), len(text))
        return position is not None and self._last_bounded.search(text, position) is not None

    def _middle(self, text: str, position: int, limit: int) -> int | None:
        """Where the pieces between the first and the last end, found leftmost from
        ``position`` (none past ``limit``)."""
        for piece in self._pieces[1:-1]:
            found = piece.search(text, position, limit)
            if found is None:
                return None
            position = found.end()
        return position


@lru_cache(maxsize=4096)
def compiled_glob(pattern: str, ignore_case: bool = True) -> Glob:
    return Glob(pattern, ignore_case=ignore_case)
