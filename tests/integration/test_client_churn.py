"""Three of our servers, a room on the first; users of the other two join and leave
repeatedly while messages flow. At the end every server's room state agrees (compared
through the client API's /state), and every message reached every server that was in the
room when it was sent, exactly once (no duplicate deliveries anywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.clients import client_server, eventually, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
ROUNDS = 3


def _state_map(events: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(e["type"], e["state_key"]): e["event_id"] for e in events}


async def _extremities_settled(server: RunningServer, room: str, last: list[tuple[str, set[str]]]) -> bool:
    """``server`` holds the last messages (so its next event points past all of them)."""
    return all([await _has(server, event_id) for event_id, _ in last])


async def _has(server: RunningServer, event_id: str) -> bool:
    stored = await server.services.event_store.get_event(event_id)
    return stored is not None and stored.outcome is Outcome.ACCEPTED


def _duplicates(server: RunningServer) -> float:
    total = 0.0
    for metric in server.services.metrics.registry.collect():
        if metric.name == "hs_inbound_duplicate_pdus":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    total += sample.value
    return total


async def test_join_leave_churn_keeps_three_servers_in_agreement(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as a, \
            client_server(db_factory, tmp_path / "b", test_ca) as b, \
            client_server(db_factory, tmp_path / "c", test_ca) as c, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob, nio_user(c, "carol") as carol:
        servers = {"a": a, "b": b, "c": c}
        status, body = await raw(a, "POST", f"{V3}/createRoom", token=alice.access_token,
                                 json={"preset": "public_chat", "name": "Churn"})
        assert status == 200, body
        room = body["room_id"]
        a_name = a.services.config.server_name
        joined = {"a"}
        sent: list[tuple[str, set[str]]] = []  # (event ID, servers in the room when sent)

        async def say(who: str, text: str) -> None:
            server, user = {"a": (a, alice), "b": (b, bob), "c": (c, carol)}[who]
            status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/{text}",
                                     token=user.access_token, json={"msgtype": "m.text", "body": text})
            assert status == 200, body
            sent.append((body["event_id"], set(joined)))

        async def join(who: str) -> None:
            server, user = {"b": (b, bob), "c": (c, carol)}[who]
            status, body = await raw(server, "POST", f"{V3}/join/{room}?server_name={a_name}",
                                     token=user.access_token, json={})
            assert status == 200, body
            joined.add(who)

        async def leave(who: str) -> None:
            server, user = {"b": (b, bob), "c": (c, carol)}[who]
            status, body = await raw(server, "POST", f"{V3}/rooms/{room}/leave", token=user.access_token, json={})
            assert status == 200, body
            joined.discard(who)

        for i in range(ROUNDS):
            await join("b")
            await say("a", f"a-{i}-1")
            await join("c")
            await say("b", f"b-{i}-1")
            await say("c", f"c-{i}-1")
            await leave("b")
            await say("a", f"a-{i}-2")
            await say("c", f"c-{i}-2")
            await leave("c")
            await say("a", f"a-{i}-3")
        await join("b")
        await join("c")
        await say("a", "last-a")
        await say("b", "last-b")
        await say("c", "last-c")
        # A server that had not yet heard of the latest join when it sent may have missed
        # that server (Matrix is eventually consistent): the next event that follows the
        # missed ones makes the receiver fetch them (get_missing_events).
        await eventually(lambda: _extremities_settled(a, room, sent[-3:]), attempts=400)
        await say("a", "the end")

        # Every message reached every server that was in the room when it was sent.
        missing: list[tuple[int, str]] = []

        async def delivered() -> bool:
            missing.clear()
            for n, (event_id, present) in enumerate(sent):
                for name in present:
                    if not await _has(servers[name], event_id):
                        missing.append((n, name))
            return not missing

        try:
            await eventually(delivered, attempts=400)
        except AssertionError:
            views = {}
            for name, server in servers.items():
                st = await server.services.event_store.get_current_state_ids(room)
                views[name] = sorted(k[1] for k in st if k[0] == "m.room.member")
                views[name + "_members"] = await server.services.event_store.joined_members(room)
            outcomes = {}
            for n, name in missing:
                st = await servers[name].services.event_store.get_event(sent[n][0])
                outcomes[(n, name)] = (st.outcome.value, st.rejection_reason) if st else None
            raise AssertionError(f"not delivered (message index, server) -> outcome: {outcomes}; "
                                 f"members seen: {views}") from None

        # The three servers agree on the room's state, as their clients see it.
        maps_seen: list[dict[tuple[str, str], str]] = []
        async def agree() -> bool:
            maps = []
            for server, user in ((a, alice), (b, bob), (c, carol)):
                status, body = await raw(server, "GET", f"{V3}/rooms/{room}/state", token=user.access_token)
                if status != 200:
                    return False
                maps.append(_state_map(body))
            maps_seen[:] = [
                {k: v for k, v in m.items() if any(o.get(k) != v for o in maps)} for m in maps
            ]
            return maps[0] == maps[1] == maps[2]

        try:
            await eventually(agree, attempts=400)
        except AssertionError:
            raise AssertionError(f"state differs: {maps_seen}") from None
        status, members = await raw(a, "GET", f"{V3}/rooms/{room}/joined_members", token=alice.access_token)
        assert status == 200 and set(members["joined"]) == {alice.user_id, bob.user_id, carol.user_id}

        # Exactly once: nobody relayed another's event, and a PDU received twice can only be
        # one its origin delivered after we had fetched it to fill a gap.
        for server in servers.values():
            assert _duplicates(server) <= server.services.metrics.inbound_fetched_events._value.get()
            assert server.services.metrics.refused_relays._value.get() == 0
