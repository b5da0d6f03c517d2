"""Presence, pure parts: the state machine's timeouts (idle, offline), the stream of
visible changes, the bound on remote users, the outbound rate limit and coalescing, the
door's check of received EDUs and the presence filter; and the service's timeouts and
coalesced EDUs on a fake clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from homeserver.client_api.filtering import filter_events, parse_filter
from homeserver.client_api.tokens import SyncToken, parse_sync_token
from homeserver.config import PresenceConfig
from homeserver.errors import MatrixError
from homeserver.metrics import Metrics
from homeserver.notifier import Notifier
from homeserver.presence.coalesce import Coalescer
from homeserver.presence.edus import MAX_STATUS_MSG_BYTES, presence_edu
from homeserver.presence.service import PresenceService
from homeserver.presence.state import KEEP, PresenceTracker
from homeserver.storage.database import Connection
from homeserver.storage.presence import PresenceStore
from homeserver.util.clock import FakeClock

ALICE = "@alice:a.test"
BOB = "@bob:b.test"
T0 = 1_700_000_000_000
MIN = 60_000


def tracker(**kw: int) -> PresenceTracker:
    args = {"idle_ms": 5 * MIN, "offline_ms": 30_000, "max_remote": 3} | kw
    return PresenceTracker(**args)


def never(_: str) -> bool:
    return False


def test_sync_online_then_idle_then_offline() -> None:
    t = tracker(offline_ms=10 * MIN)
    changed = t.sync(ALICE, "online", T0)
    assert changed is not None and changed.presence == "online" and changed.currently_active
    # Another sync: no visible change, no new position.
    pos = t.position
    assert t.sync(ALICE, "online", T0 + 1000) is None and t.position == pos
    # Active window passed: currently_active drops (a visible change).
    [inactive] = t.tick(T0 + 1000 + MIN, never)
    assert inactive.presence == "online" and not inactive.currently_active
    # Idle timeout: online -> unavailable.
    assert t.tick(T0 + 4 * MIN, never) == []
    [idle] = t.tick(T0 + 1000 + 5 * MIN, never)
    assert idle.presence == "unavailable"
    # Offline timeout after the last sync.
    [gone] = t.tick(T0 + 1000 + 10 * MIN, never)
    assert gone.presence == "offline" and t.tick(T0 + 60 * MIN, never) == []


def test_a_sync_in_flight_keeps_the_user_from_going_offline() -> None:
    t = tracker()
    t.sync(ALICE, "online", T0)
    assert all(p.presence != "offline" for p in t.tick(T0 + 40_000, lambda u: u == ALICE))
    local = t.get(ALICE)
    assert local is not None and local.presence == "online"
    [gone] = t.tick(T0 + 80_000, never)  # 40 s since the sync was last seen in flight
    assert gone.presence == "offline"


def test_set_presence_unavailable_and_offline() -> None:
    t = tracker()
    changed = t.sync(ALICE, "unavailable", T0)
    assert changed is not None and changed.presence == "unavailable" and not changed.currently_active
    assert t.sync(BOB, "offline", T0) is None and t.get(BOB) is None


def test_put_keeps_or_sets_status_message() -> None:
    t = tracker()
    first = t.set_local(ALICE, "online", T0, status_msg="lunch", active=True)
    assert first is not None and first.content(T0 + 5) == {
        "presence": "online", "currently_active": True, "last_active_ago": 5, "status_msg": "lunch",
    }
    t.sync(ALICE, "online", T0 + 10)
    kept = t.get(ALICE)
    assert kept is not None and kept.status_msg == "lunch"
    cleared = t.set_local(ALICE, "online", T0 + 20, status_msg=None, active=True)
    assert cleared is not None and cleared.status_msg is None
    assert t.set_local(ALICE, "online", T0 + 30, status_msg=KEEP) is None
    with pytest.raises(ValueError):
        t.set_local(ALICE, "busy", T0)


def test_changes_since_a_position_are_the_latest_per_user() -> None:
    t = tracker()
    t.sync(ALICE, "online", T0)
    mark = t.position
    t.set_remote(BOB, "online", T0 + 1, last_active_ago=10)
    t.set_local(ALICE, "unavailable", T0 + 2, status_msg=KEEP)
    assert [p.user_id for p in t.changed_since(mark)] == [ALICE, BOB]
    assert [p.user_id for p in t.changed_since(t.position)] == []
    # Positions are strictly increasing, even within one millisecond.
    before = t.position
    t.set_remote(BOB, "offline", T0 + 2)
    assert t.position == before + 1


def test_remote_users_are_bounded_oldest_forgotten() -> None:
    t = tracker(max_remote=3)
    for i in range(5):
        t.set_remote(f"@u{i}:b.test", "online", T0 + i)
    assert list(t.remote) == ["@u2:b.test", "@u3:b.test", "@u4:b.test"] and t.evicted == 2
    assert t.get("@u0:b.test") is None
    assert {p.user_id for p in t.changed_since(0)} == {"@u2:b.test", "@u3:b.test", "@u4:b.test"}
    # The same state again is no change.
    assert t.set_remote("@u4:b.test", "online", T0 + 10) is None
    remote = t.set_remote("@u4:b.test", "online", T0 + 10, last_active_ago=500, currently_active=True)
    assert remote is not None and remote.content(T0 + 20)["last_active_ago"] == 510


def test_coalescer_sends_at_most_once_per_interval_latest_wins() -> None:
    c = Coalescer(10.0)
    assert c.offer(ALICE, ["b", "c"], 100.0) == ["b", "c"]
    # Within the interval: held, once per pair however many changes.
    assert c.offer(ALICE, ["b", "c"], 101.0) == []
    assert c.offer(ALICE, ["b"], 102.0) == []
    assert c.pending == 2 and c.due(105.0) == {}
    assert c.due(110.0) == {"b": [ALICE], "c": [ALICE]} and c.pending == 0
    # Sent at 110: the next change waits until 120.
    assert c.offer(ALICE, ["b"], 111.0) == []
    assert c.next_due() == 120.0
    assert c.offer("@carol:a.test", ["b"], 111.0) == ["b"]  # other users are not held back
    assert c.due(120.0) == {"b": [ALICE]}
    assert c.offer(ALICE, ["b"], 131.0) == ["b"]


def test_coalescer_pending_is_bounded() -> None:
    c = Coalescer(10.0, max_pending=2)
    users = [f"@u{i}:a.test" for i in range(4)]
    for u in users:
        c.offer(u, ["b"], 0.0)
    for u in users:
        c.offer(u, ["b"], 1.0)
    assert c.pending == 2 and c.dropped == 2
    assert c.due(10.0) == {"b": users[2:]}


def test_the_door_keeps_only_the_origins_users_within_bounds() -> None:
    content = {"push": [
        {"user_id": "@bob:b.test", "presence": "online", "last_active_ago": 5, "currently_active": True,
         "status_msg": "hi", "extra": "dropped"},
        {"user_id": "@eve:c.test", "presence": "online"},
        {"user_id": "@bob2:b.test", "presence": "busy"},
        {"user_id": "@bob3:b.test", "presence": "online", "status_msg": "x" * (MAX_STATUS_MSG_BYTES + 1)},
        {"user_id": "@bob4:b.test", "presence": "offline", "last_active_ago": -1},
        "junk",
    ]}
    kept = presence_edu("b.test", content)
    assert kept.content == {"push": [{"user_id": "@bob:b.test", "presence": "online", "currently_active": True,
                                      "status_msg": "hi", "last_active_ago": 5}]}
    assert (kept.foreign, kept.malformed) == (1, 4)
    assert presence_edu("b.test", {"push": [{"user_id": "@eve:c.test", "presence": "online"}]}).content is None
    assert presence_edu("b.test", {"push": "nope"}).content is None


def test_presence_filter() -> None:
    """The filter's presence part goes through the one filter module (client_api/filtering.py)."""
    events = [{"type": "m.presence", "sender": u, "content": {}} for u in (ALICE, BOB, "@carol:a.test")]

    def apply(flt: dict[str, Any]) -> list[dict[str, Any]]:
        return filter_events(parse_filter(flt).presence, events)

    assert apply({}) == events
    assert apply({"presence": {"not_senders": [BOB]}}) == [events[0], events[2]]
    assert apply({"presence": {"senders": [BOB]}}) == [events[1]]
    assert apply({"presence": {"types": ["m.*"], "limit": 1}}) == [events[0]]
    assert apply({"presence": {"not_types": ["m.presence"]}}) == []
    assert apply({"presence": {"types": []}}) == []
    with pytest.raises(MatrixError) as raised:
        parse_filter({"presence": "junk"})  # /sync refuses a malformed filter (400) before presence sees it
    assert (raised.value.status, raised.value.errcode) == (400, "M_BAD_JSON")


def test_sync_token_presence_position_is_backwards_compatible() -> None:
    token = SyncToken(5, 6, 7, 8, 9, 10, 1_700_000_000_123)
    assert parse_sync_token(token.encode()) == token
    assert parse_sync_token("s5_6_7_8_9_t10") == SyncToken(5, 6, 7, 8, 9, 10, 0)
    assert parse_sync_token("s5_6_7") == SyncToken(5, 6, 7)


# ---------------------------------------------------------------------- the service, fake clock


class FakeStore(PresenceStore):
    """Rooms as sets of members, in memory (the SQL is exercised by the integration tests)."""

    def __init__(self, rooms: dict[str, set[str]]) -> None:
        self.rooms = rooms

    async def users_sharing_a_room(self, user_id: str) -> set[str]:
        return {u for members in self.rooms.values() if user_id in members for u in members}

    async def share_a_room(self, user_id: str, other: str) -> bool:
        return other in await self.users_sharing_a_room(user_id)

    async def shares_a_room_with_server(self, user_id: str, server: str) -> bool:
        return any(u.endswith(":" + server) for u in await self.users_sharing_a_room(user_id))

    async def sharing_with_server(self, user_ids: list[str], server: str) -> set[str]:
        return {u for u in user_ids if await self.shares_a_room_with_server(u, server)}

    async def joined_rooms(self, user_id: str) -> list[str]:
        return [r for r, members in self.rooms.items() if user_id in members]


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], list[str]]] = []

    async def enqueue_edu(self, edu_type: str, content: Mapping[str, Any], destinations: Iterable[str],
                          conn: Connection | None = None) -> bool:
        self.sent.append((edu_type, dict(content), sorted(destinations)))
        return True


def service(clock: FakeClock, **config: Any) -> tuple[PresenceService, FakeSender]:
    store = FakeStore({"!r:a.test": {ALICE, BOB, "@carol:c.test"}, "!s:a.test": {"@dave:a.test"}})
    sender = FakeSender()
    cfg = PresenceConfig(**({"offline_timeout_seconds": 30.0, "idle_timeout_seconds": 300.0,
                             "federation_interval_seconds": 10.0} | config))
    svc = PresenceService("a.test", cfg, store, sender, Notifier(clock), Metrics(), clock)  # type: ignore[arg-type]
    return svc, sender


async def test_service_sends_once_then_coalesces_and_times_out() -> None:
    clock = FakeClock(start_ms=T0)
    svc, sender = service(clock)
    await svc.set_status(ALICE, "online", "here")
    assert [(t, d) for t, _, d in sender.sent] == [("m.presence", ["b.test", "c.test"])]
    assert sender.sent[0][1]["push"][0]["status_msg"] == "here"
    # Three changes within the interval: one update when due, the latest.
    await svc.set_status(ALICE, "unavailable", "away")
    await svc.set_status(ALICE, "online", "back")
    await svc.set_status(ALICE, "unavailable", "gone again")
    assert len(sender.sent) == 1
    await clock.advance(9.0)
    await svc.tick()
    assert len(sender.sent) == 1
    await clock.advance(1.0)
    await svc.tick()
    assert len(sender.sent) == 2
    _, content, dests = sender.sent[1]
    assert dests == ["b.test", "c.test"]
    assert [(p["presence"], p["status_msg"]) for p in content["push"]] == [("unavailable", "gone again")]
    # No /sync for the offline timeout: offline, sent when due.
    await clock.advance(25.0)
    await svc.tick()
    assert svc.status(ALICE)["presence"] == "offline"
    assert sender.sent[-1][1]["push"][0]["presence"] == "offline"
    # A user sharing no room with another server sends nothing.
    await svc.set_status("@dave:a.test", "online", None)
    assert all("@dave:a.test" not in str(c) for _, c, _ in sender.sent)


async def test_service_sync_section_and_received_presence() -> None:
    clock = FakeClock(start_ms=T0)
    svc, sender = service(clock)
    await svc.on_sync(ALICE, "online")
    events, position = await svc.sync_events(ALICE, None)
    assert [e["sender"] for e in events] == [ALICE]
    await svc.on_edu("b.test", {"push": [{"user_id": BOB, "presence": "online", "currently_active": True}]})
    # Another server's user, not sharing a room with ours: dropped.
    await svc.on_edu("x.test", {"push": [{"user_id": "@eve:x.test", "presence": "online"}]})
    events, _ = await svc.sync_events(ALICE, position)
    assert [e["sender"] for e in events] == [BOB]
    assert svc.status("@eve:x.test")["presence"] == "offline"
    # Dave shares no room with Bob: he sees only himself.
    events, _ = await svc.sync_events("@dave:a.test", None)
    assert events == []
    # Received presence is never sent on.
    assert all(BOB not in str(c) for _, c, _ in sender.sent)


async def test_service_disabled_keeps_and_sends_nothing() -> None:
    clock = FakeClock(start_ms=T0)
    svc, sender = service(clock, enabled=False)
    await svc.set_status(ALICE, "online", "here")
    await svc.on_sync(ALICE, "online")
    await svc.on_edu("b.test", {"push": [{"user_id": BOB, "presence": "online"}]})
    assert sender.sent == [] and svc.status(ALICE) == {"presence": "offline", "currently_active": False}
    assert (await svc.sync_events(ALICE, None))[0] == []


def test_remote_users_time_out_then_are_forgotten() -> None:
    t = tracker(max_remote=10)
    t.set_remote(BOB, "online", T0, currently_active=True)
    t.set_remote("@carol:b.test", "online", T0 + 20 * MIN)
    assert t.tick(T0 + 29 * MIN, never) == []
    [gone] = t.tick(T0 + 30 * MIN, never)
    assert (gone.user_id, gone.presence, gone.currently_active) == (BOB, "offline", False)
    # Carol was heard of later; Bob, offline, is forgotten a period later.
    [carol] = t.tick(T0 + 50 * MIN, never)
    assert carol.user_id == "@carol:b.test"
    t.tick(T0 + 60 * MIN, never)
    assert t.get(BOB) is None and [p.user_id for p in t.changed_since(0)] == ["@carol:b.test"]


async def test_service_pings_online_users_to_other_servers() -> None:
    clock = FakeClock(start_ms=T0)
    svc, sender = service(clock, offline_timeout_seconds=3600.0, idle_timeout_seconds=3600.0)
    await svc.set_status(ALICE, "online", None)
    assert len(sender.sent) == 1
    for _ in range(25):
        await clock.advance(60.0)
        await svc.tick()
    # The currently_active change after a minute went out; no ping yet.
    assert len(sender.sent) == 2
    await clock.advance(60.0)
    await svc.tick()
    # A ping 25 minutes after the last update.
    assert [c["push"][0]["currently_active"] for _, c, _ in sender.sent] == [True, False, False]


def test_an_event_sent_is_activity() -> None:
    t = tracker()
    assert t.activity(ALICE, T0) is None  # unknown: left alone
    t.set_local(ALICE, "unavailable", T0, active=False)
    back = t.activity(ALICE, T0 + 1000)
    assert back is not None and back.presence == "online" and back.currently_active
    assert t.activity(ALICE, T0 + 2000) is None  # a bare bump is no visible change
    local = t.get(ALICE)
    assert local is not None and local.last_active_ms == T0 + 2000
    t.set_local(ALICE, "offline", T0 + 3000)
    assert t.activity(ALICE, T0 + 4000) is None
