"""Glob patterns chosen by another party are matched in bounded time (``util/glob.py``).

- A room's ``m.room.server_acl`` (set by whoever holds the power in a room our users are in,
  possibly another server) with ``*a*a*a*a*a*a*b`` against a 255-character server name
  (the requesting server names itself): the regular expression of ``.*`` runs backtracked
  for minutes, for every federation request about the room.
- A push rule's ``pattern`` against ``content.body`` (64 KB, sent by anyone in the room):
  ``*a*a*b`` against 2,000 characters took 6 s.
- A filter's ``types`` glob (``client_api/filtering.py``, its own matcher).

The new matcher gives the same answers as the regular expressions it replaces (checked
on random patterns and texts, with ``?``, case and word boundaries)."""

from __future__ import annotations

import random
import re
import time

from homeserver.push.evaluate import EventContext
from homeserver.rooms.acl import ServerAcl
from homeserver.util.glob import Glob


def _reference(pattern: str, words: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(rf"(?<!\w){body}(?!\w)" if words else body, re.IGNORECASE | re.DOTALL)


def test_glob_agrees_with_the_regular_expression() -> None:
    rng = random.Random(22)
    for _ in range(20_000):
        pattern = "".join(rng.choice("ab.?*A ") for _ in range(rng.randint(0, 6)))
        text = "".join(rng.choice("abAB .-") for _ in range(rng.randint(0, 10)))
        glob = Glob(pattern)
        assert glob.fullmatch(text) == (_reference(pattern, False).fullmatch(text) is not None), (pattern, text)
        assert glob.search_words(text) == (_reference(pattern, True).search(text) is not None), (pattern, text)


def test_server_acl_pattern_against_a_long_name() -> None:
    acl = ServerAcl.from_content({"allow": ["*"], "deny": ["*a" * 40 + "*b", "?" * 300]})
    started = time.monotonic()
    assert acl.allows("a" * 250 + ".example")
    assert not acl.allows("a" * 250 + "b")
    assert time.monotonic() - started < 0.5


def test_push_pattern_against_a_long_body() -> None:
    event = {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "a" * 65_536}}
    context = EventContext(event, member_count=2, sender_power=0)
    started = time.monotonic()
    assert not context.glob(("content", "body"), "*a" * 40 + "*b")
    assert not context.glob(("content", "msgtype"), "*a" * 40 + "*b")
    assert context.glob(("content", "body"), "a*a")
    assert time.monotonic() - started < 0.5
