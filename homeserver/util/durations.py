"""Durations written as ``<n>w``, ``<n>d``, ``<n>h``, ``<n>m`` or ``<n>s`` (config keys, CLI options)."""

from __future__ import annotations

import re

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([wdhms])\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``text`` ("30d", "12h", "5m", "90s"); ValueError if not such a duration."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use <n>d, <n>h, <n>m or <n>s)")
    return float(m.group(1)) * _UNITS[m.group(2)]
