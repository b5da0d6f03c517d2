"""Dotted paths into JSON objects, as the spec writes them in filters' ``event_fields`` and
push rules' ``key``: ``content.m\\.mentions.room`` is ``("content", "m.mentions", "room")``;
``\\.`` is a literal dot and ``\\\\`` a backslash (any other backslash is kept as it is)."""

from __future__ import annotations


def split_path(path: str) -> tuple[str, ...]:
    """The keys of a dotted path."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path) and path[i + 1] in ".\\":
            current.append(path[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return tuple(parts)
