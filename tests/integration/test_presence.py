"""Presence on real servers (both engines): PUT/GET /status and /sync on one server; a
user's presence seen on another server within 2 s; received presence kept only about
the origin's users who share a room with ours; three servers in a room each receive
each update once (no relay, no amplification); the switch off sends and shows nothing."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from homeserver.server import RunningServer
from tests.clients import client_server, eventually, nio_user, raw
from tests.conftest import DatabaseFactory
from tests.remote import fake_remote

V3 = "/_matrix/client/v3"
WAIT = 30.0
# Nobody goes offline during a test (no /sync keeps them online).
QUIET = {"presence": {"offline_timeout_seconds": 3600.0}}


def metric(server: RunningServer, name: str, labels: dict[str, str] | None = None) -> float:
    return server.services.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def _waiting(server: RunningServer) -> bool:
    return server.services.notifier.waiting > 0


def presence_of(body: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    found = [e for e in body.get("presence", {}).get("events", []) if e["sender"] == user_id]
    return found[-1]["content"] if found else None


async def shared_room(creator: tuple[RunningServer, str], *others: tuple[RunningServer, str, str]) -> str:
    server, token = creator
    status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json={"preset": "public_chat"})
    assert status == 200, body
    room: str = body["room_id"]
    via = server.services.config.server_name
    for other, other_token, _ in others:
        status, body = await raw(other, "POST", f"{V3}/join/{room}?server_name={via}", token=other_token, json={})
        assert status == 200, body

    async def joined() -> bool:
        for s in {id(server): server, **{id(o): o for o, _, _ in others}}.values():
            members = set(await s.services.event_store.joined_members(room))
            if not {u for _, _, u in others} <= members:
                return False
        return True

    await eventually(joined, attempts=600)
    return room


async def test_status_and_sync_on_one_server(db_factory: DatabaseFactory, tmp_path: Path,
                                             test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "hs", test_ca, extra=QUIET) as hs, \
            nio_user(hs, "alice") as alice, nio_user(hs, "bob") as bob:
        a, b = alice.access_token, bob.access_token
        path = f"{V3}/presence/{alice.user_id}/status"
        # Only for oneself; presence and status_msg checked.
        status, body = await raw(hs, "PUT", path, token=b, json={"presence": "online"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(hs, "PUT", path, token=a, json={"presence": "busy"})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await raw(hs, "PUT", path, token=a, json={"presence": "online", "status_msg": "x" * 2000})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await raw(hs, "PUT", path, token=a, json={"presence": "online", "status_msg": "lunch"})
        assert (status, body) == (200, {})
        status, body = await raw(hs, "GET", path, token=a)
        assert status == 200 and body["presence"] == "online" and body["status_msg"] == "lunch", body
        assert body["currently_active"] is True and 0 <= body["last_active_ago"] < 10_000
        # Another user: only when sharing a room; an unknown local user: 404.
        status, body = await raw(hs, "GET", path, token=b)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(hs, "GET", f"{V3}/presence/@nobody:{hs.services.config.server_name}/status", token=b)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        room = await shared_room((hs, a), (hs, b, bob.user_id))
        status, body = await raw(hs, "GET", path, token=b)
        assert status == 200 and body["presence"] == "online", body
        # Sending an event is activity: unavailable -> online (on the next tick).
        status, _ = await raw(hs, "PUT", path, token=a, json={"presence": "unavailable", "status_msg": "lunch"})
        assert status == 200
        status, sent = await raw(hs, "PUT", f"{V3}/rooms/{room}/send/m.room.message/t1", token=a,
                                 json={"msgtype": "m.text", "body": "back"})
        assert status == 200

        async def online_again() -> bool:
            status, body = await raw(hs, "GET", path, token=b)
            return status == 200 and body["presence"] == "online" and body["status_msg"] == "lunch"

        await eventually(online_again)
        # A receipt and a typing notice are activity too.
        for n, (method, activity, content) in enumerate((
                ("POST", f"receipt/m.read/{sent['event_id']}", {}),
                ("PUT", f"typing/{alice.user_id}", {"typing": True, "timeout": 1000}))):
            status, _ = await raw(hs, "PUT", path, token=a, json={"presence": "unavailable", "status_msg": "lunch"})
            assert status == 200
            status, body = await raw(hs, "GET", path, token=b)
            assert body["presence"] == "unavailable", (n, body)
            status, body = await raw(hs, method, f"{V3}/rooms/{room}/{activity}", token=a, json=content)
            assert status == 200, body
            await eventually(online_again)

        # /sync: Bob sees Alice (and himself: set_presence defaults to online).
        status, body = await raw(hs, "GET", f"{V3}/sync", token=b)
        assert status == 200
        assert presence_of(body, alice.user_id) is not None and presence_of(body, bob.user_id) is not None
        since = body["next_batch"]
        assert "_p" in since
        # An incremental sync waits for, and shows, Alice's change only.
        status, body = await raw(hs, "PUT", path, token=a, json={"presence": "unavailable", "status_msg": "afk"})
        assert status == 200
        status, body = await raw(hs, "GET", f"{V3}/sync?since={since}&timeout=5000", token=b)
        assert status == 200
        events = body["presence"]["events"]
        assert [e["sender"] for e in events] == [alice.user_id], events
        assert events[0]["content"]["presence"] == "unavailable" and events[0]["type"] == "m.presence"
        # A waiting long-poll is woken by a change.
        since = body["next_batch"]
        poll = asyncio.create_task(raw(hs, "GET", f"{V3}/sync?since={since}&timeout=20000", token=b))
        await eventually(lambda: _waiting(hs))
        started = time.monotonic()
        status, _ = await raw(hs, "PUT", path, token=a, json={"presence": "online", "status_msg": "back"})
        assert status == 200
        status, body = await poll
        assert status == 200 and time.monotonic() - started < 5.0
        assert (presence_of(body, alice.user_id) or {}).get("status_msg") == "back", body
        # The presence filter.
        flt = '{"presence":{"not_senders":["' + alice.user_id + '"]}}'
        status, body = await raw(hs, "GET", f"{V3}/sync?filter={flt}", token=b)
        assert status == 200 and presence_of(body, alice.user_id) is None and presence_of(body, bob.user_id)
        # A stored filter, by its ID (the one filter module of the client API).
        status, body = await raw(hs, "POST", f"{V3}/user/{bob.user_id}/filter", token=b,
                                 json={"presence": {"senders": [alice.user_id]}})
        assert status == 200, body
        status, body = await raw(hs, "GET", f"{V3}/sync?filter={body['filter_id']}", token=b)
        assert status == 200 and presence_of(body, alice.user_id) and presence_of(body, bob.user_id) is None
        # set_presence: checked, and unavailable is applied.
        status, body = await raw(hs, "GET", f"{V3}/sync?set_presence=away", token=b)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, _ = await raw(hs, "GET", f"{V3}/sync?set_presence=unavailable", token=b)
        status, body = await raw(hs, "GET", f"{V3}/presence/{bob.user_id}/status", token=a)
        assert status == 200 and body["presence"] == "unavailable", body
        # An old token without the presence position still works.
        old = since.split("_p")[0]
        status, body = await raw(hs, "GET", f"{V3}/sync?since={old}&set_presence=offline", token=b)
        assert status == 200 and presence_of(body, alice.user_id) is not None


async def test_presence_reaches_another_server_within_two_seconds(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca, extra=QUIET) as a, \
            client_server(db_factory, tmp_path / "b", test_ca, extra=QUIET) as b, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        await shared_room((a, alice.access_token), (b, bob.access_token, bob.user_id))
        status, body = await raw(b, "GET", f"{V3}/sync?set_presence=offline", token=bob.access_token)
        assert status == 200
        since = body["next_batch"]
        started = time.monotonic()
        status, _ = await raw(a, "PUT", f"{V3}/presence/{alice.user_id}/status", token=alice.access_token,
                              json={"presence": "online", "status_msg": "from a"})
        assert status == 200
        seen: dict[str, Any] | None = None
        while seen is None or seen.get("status_msg") != "from a":
            assert time.monotonic() - started < 2.0, "presence did not arrive within 2 s"
            status, body = await raw(b, "GET", f"{V3}/sync?since={since}&timeout=2000&set_presence=offline",
                                     token=bob.access_token)
            assert status == 200
            since = body["next_batch"]
            seen = presence_of(body, alice.user_id) or seen
        assert seen["presence"] == "online" and seen["currently_active"] is True
        status, body = await raw(b, "GET", f"{V3}/presence/{alice.user_id}/status", token=bob.access_token)
        assert status == 200 and body["status_msg"] == "from a"


async def test_a_server_joining_later_gets_the_presence_of_the_rooms_users(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca, extra=QUIET) as a, \
            client_server(db_factory, tmp_path / "b", test_ca, extra=QUIET) as b, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        # Both set their presence before they share a room: nothing goes out yet.
        for server, user, msg in ((a, alice, "alice early"), (b, bob, "bob early")):
            status, _ = await raw(server, "PUT", f"{V3}/presence/{user.user_id}/status", token=user.access_token,
                                  json={"presence": "online", "status_msg": msg})
            assert status == 200
        assert metric(a, "hs_presence_sent_updates_total") == metric(b, "hs_presence_sent_updates_total") == 0
        await shared_room((a, alice.access_token), (b, bob.access_token, bob.user_id))

        async def both_seen() -> bool:
            sa, ba = await raw(a, "GET", f"{V3}/presence/{bob.user_id}/status", token=alice.access_token)
            sb, bb = await raw(b, "GET", f"{V3}/presence/{alice.user_id}/status", token=bob.access_token)
            return (sa, sb) == (200, 200) and ba.get("status_msg") == "bob early" \
                and bb.get("status_msg") == "alice early"

        await eventually(both_seen, attempts=200)


async def test_received_presence_only_about_the_origins_users_sharing_a_room(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca, extra=QUIET) as a, \
            client_server(db_factory, tmp_path / "b", test_ca, extra=QUIET) as b, \
            fake_remote(test_ca, tmp_path / "evil") as evil, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        await shared_room((a, alice.access_token), (b, bob.access_token, bob.user_id))
        eve = f"@eve:{evil.server_name}"
        status, _ = await evil.send(a, [], [{"edu_type": "m.presence", "content": {"push": [
            {"user_id": bob.user_id, "presence": "online", "status_msg": "forged"},  # not the origin's user
            {"user_id": eve, "presence": "online"},  # the origin's, but shares no room with ours
        ]}}])
        assert status == 200
        assert await a.services.inbound_worker.wait_idle(WAIT)
        origin = evil.server_name
        assert metric(a, "hs_inbound_edus_dropped_total", {"origin": origin, "reason": "foreign_user"}) == 1
        assert metric(a, "hs_presence_dropped_updates_total", {"origin": origin, "reason": "not_shared"}) == 1
        assert a.services.presence is not None
        assert a.services.presence.tracker.get(bob.user_id) is None
        assert a.services.presence.tracker.get(eve) is None
        # Bob's own server speaks for him.
        status, _ = await raw(b, "PUT", f"{V3}/presence/{bob.user_id}/status", token=bob.access_token,
                              json={"presence": "online", "status_msg": "real"})
        assert status == 200

        async def arrived() -> bool:
            status, body = await raw(a, "GET", f"{V3}/presence/{bob.user_id}/status", token=alice.access_token)
            return status == 200 and body.get("status_msg") == "real"

        await eventually(arrived)


async def _quiet(servers: list[RunningServer]) -> bool:
    for s in servers:
        if not s.services.inbound_worker.idle:
            return False
        if await s.services.db.fetchval("SELECT COUNT(*) FROM outbound_edu_queue"):
            return False
    return True


async def test_three_servers_each_receive_each_update_once(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(client_server(db_factory, tmp_path / f"hs{i}", test_ca,
                                                                 extra=QUIET)) for i in range(3)]
        users = [await stack.enter_async_context(nio_user(s, f"user{i}")) for i, s in enumerate(servers)]
        await shared_room((servers[0], users[0].access_token),
                          *((s, u.access_token, u.user_id) for s, u in zip(servers[1:], users[1:], strict=True)))
        await eventually(lambda: _quiet(servers), attempts=600)
        for s, u in zip(servers, users, strict=True):
            status, _ = await raw(s, "PUT", f"{V3}/presence/{u.user_id}/status", token=u.access_token,
                                  json={"presence": "online", "status_msg": f"hi from {u.user_id}"})
            assert status == 200

        async def everyone_sees_everyone() -> bool:
            for s in servers:
                assert s.services.presence is not None
                for u in users:
                    seen = s.services.presence.tracker.get(u.user_id)
                    if seen is None or seen.status_msg != f"hi from {u.user_id}":
                        return False
            return await _quiet(servers)

        await eventually(everyone_sees_everyone, attempts=600)
        names = [s.services.config.server_name for s in servers]
        for i, s in enumerate(servers):
            # One update from each other server, about its own user; nothing relayed.
            for j, origin in enumerate(names):
                expected = 0.0 if i == j else 1.0
                assert metric(s, "hs_presence_received_updates_total", {"origin": origin}) == expected, (i, j)
            assert metric(s, "hs_presence_sent_updates_total") == 2.0
            assert metric(s, "hs_outbound_refused_edus_total") == 0.0


async def test_switch_off_sends_and_shows_nothing(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    off = {"presence": {"enabled": False}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra=off) as a, \
            client_server(db_factory, tmp_path / "b", test_ca, extra=QUIET) as b, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        await shared_room((a, alice.access_token), (b, bob.access_token, bob.user_id))
        status, body = await raw(a, "PUT", f"{V3}/presence/{alice.user_id}/status", token=alice.access_token,
                                 json={"presence": "online", "status_msg": "secret"})
        assert (status, body) == (200, {})
        status, body = await raw(a, "GET", f"{V3}/presence/{alice.user_id}/status", token=alice.access_token)
        assert status == 200 and body["presence"] == "offline" and "status_msg" not in body
        status, body = await raw(a, "GET", f"{V3}/sync", token=alice.access_token)
        assert status == 200 and body["presence"]["events"] == []
        # Bob's server sends his presence; Alice's drops it.
        status, _ = await raw(b, "PUT", f"{V3}/presence/{bob.user_id}/status", token=bob.access_token,
                              json={"presence": "online"})
        assert status == 200
        origin = b.services.config.server_name

        async def dropped() -> bool:
            return metric(a, "hs_presence_dropped_updates_total", {"origin": origin, "reason": "disabled"}) >= 1

        await eventually(dropped, attempts=400)
        await eventually(lambda: _quiet([a, b]), attempts=400)
        assert metric(a, "hs_presence_sent_updates_total") == 0.0
        assert metric(b, "hs_presence_received_updates_total", {"origin": a.services.config.server_name}) == 0.0
        status, body = await raw(a, "GET", f"{V3}/sync", token=alice.access_token)
        assert status == 200 and body["presence"]["events"] == []
