"""Push rule evaluation for one event in a room with many local members (default rules,
each member with a display name).

Prints the median time (ms) per event of: the rule evaluation alone (``DEFAULT_RULES``
over all members), the same with 1% of members on rules of their own, and the notification
pass's in-memory part (member scan of the room state, power levels, evaluation; caches
warm, no database). Target: < 2 ms per event at 1,000 members.
Run: .venv/bin/python bench/bench_push.py [members]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.events.event import Event, StateKey
from homeserver.events.versions import ROOM_V10
from homeserver.push.evaluate import DEFAULT_RULES, CompiledRules, EventContext, Member
from homeserver.push.notify import NotificationPass
from homeserver.push.rulebook import RuleBook
from homeserver.push.rules import UserRule, default_push_rules, ruleset

RUNS = 300
SERVER = "example.org"


def median_ms(fn: Callable[[], Any], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def message(body: str, **content: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "room_id": "!room:example.org", "sender": "@sender:remote.org",
            "content": {"msgtype": "m.text", "body": body, **content}, "origin_server_ts": 1, "depth": 10,
            "prev_events": [], "auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}}


class _State:
    def __init__(self, state: Mapping[StateKey, str]) -> None:
        self.state = state

    async def current_state(self, room_id: str) -> Mapping[StateKey, str]:
        return self.state


class _Wakes:
    def wake_user(self, user_id: str) -> None:
        pass


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    members = [Member(f"@user{i}:{SERVER}", f"User Number {i}") for i in range(n)]
    plain = message("hello everyone, how is it going today?")
    mention = message("hey", **{"m.mentions": {"user_ids": [members[7].user_id]}})
    named = message("User Number 42 and user9 please look")

    def evaluate(event: dict[str, Any]) -> Callable[[], Any]:
        return lambda: DEFAULT_RULES.evaluate(EventContext(event, n + 1, 0, {}), members)

    print(f"members: {n}")
    for label, event in (("plain message", plain), ("with m.mentions", mention), ("legacy name/localpart", named)):
        print(f"  evaluate {label:<24} {median_ms(evaluate(event)):.3f} ms/event")

    # 1% of members with rules of their own (each evaluated as a group of one).
    own = {m.user_id: CompiledRules.compile(ruleset(default_push_rules(m.user_id), [
        UserRule("content", "cake", ["notify"], pattern="cake")], {})) for m in members[: max(1, n // 100)]}
    shared = [m for m in members if m.user_id not in own]

    def mixed() -> None:
        ctx = EventContext(plain, n + 1, 0, {})
        DEFAULT_RULES.evaluate(ctx, shared)
        for m in members:
            rules = own.get(m.user_id)
            if rules is not None:
                rules.evaluate(ctx, [m])
    print(f"  evaluate 1% own rules               {median_ms(mixed):.3f} ms/event")

    # The pass's in-memory part: room state scan, member contents and rules from warm caches.
    state: dict[StateKey, str] = {("m.room.member", m.user_id): f"$m{i}" for i, m in enumerate(members)}
    state[("m.room.power_levels", "")] = "$pl"
    npass = NotificationPass(SERVER, None, _State(state), None, RuleBook(None), _Wakes())  # type: ignore[arg-type]
    for i, m in enumerate(members):
        npass._contents[f"$m{i}"] = {"membership": "join", "displayname": m.display_name}
        npass.rulebook._compiled[m.user_id] = None
    npass._contents["$pl"] = {"users": {}, "users_default": 0}
    event = Event.from_pdu(plain, ROOM_V10)
    loop = asyncio.new_event_loop()
    try:
        print(f"  notification pass (in memory)       "
              f"{median_ms(lambda: loop.run_until_complete(npass.evaluate(event))):.3f} ms/event")
    finally:
        loop.close()


if __name__ == "__main__":
    main()
