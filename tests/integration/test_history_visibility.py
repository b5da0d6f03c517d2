"""History visibility (m.room.history_visibility: world_readable, shared, invited, joined)
with real servers on loopback, both engines: what a user reads through /messages, /event
and /sync, and what another server reads through /event, /backfill and
/get_missing_events (whole, redacted, or refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from nio import JoinResponse, RoomCreateResponse, SyncResponse

from homeserver.events.hashes import compute_event_id
from homeserver.events.versions import get_room_version
from tests.clients import client_server, msg, nio_user, raw, sync_until
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.remote import fake_remote
from tests.servers import make_config, running_server

V3 = "/_matrix/client/v3"
FED = "/_matrix/federation/v1"
TEXT = "m.room.message"
VISIBILITIES = ["world_readable", "shared", "invited", "joined"]
# Which of Alice's messages Bob may read, per visibility: sent before his invite, while
# he was invited, after he joined.
EXPECTED = {
    "world_readable": ["before", "invited", "joined"],
    "shared": ["before", "invited", "joined"],
    "invited": ["invited", "joined"],
    "joined": ["joined"],
}


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == TEXT and "body" in e["content"]]


@pytest.mark.parametrize("visibility", VISIBILITIES)
async def test_users_read_per_visibility(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], visibility: str
) -> None:
    async with client_server(db_factory, tmp_path / "hs", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(initial_state=[{
            "type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": visibility}}])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        ids: dict[str, str] = {}

        async def send(body: str) -> None:
            status, reply = await raw(server, "PUT", f"{V3}/rooms/{room}/send/{TEXT}/{body}",
                                      token=alice.access_token, json=msg(body))
            assert status == 200
            ids[body] = reply["event_id"]

        await send("before")
        await alice.room_invite(room, bob.user_id)
        await send("invited")
        await sync_until(bob, lambda r: room in r.rooms.invite)
        assert isinstance(await bob.join(room), JoinResponse)
        await send("joined")
        want = EXPECTED[visibility]

        # /messages, backwards and forwards.
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=100", token=bob.access_token)
        assert status == 200 and bodies(body["chunk"]) == list(reversed(want)) and "end" not in body
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=f&limit=100", token=bob.access_token)
        assert status == 200 and bodies(body["chunk"]) == want
        # His own join is always his to see.
        assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id
                   and e["content"]["membership"] == "join" for e in body["chunk"])
        # /event.
        for name, event_id in ids.items():
            status, _ = await raw(server, "GET", f"{V3}/rooms/{room}/event/{event_id}", token=bob.access_token)
            assert status == (200 if name in want else 404), name
        # /sync: the initial timeline holds only what he may see.
        resp = await bob.sync(timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 50}}})
        assert isinstance(resp, SyncResponse)
        timeline = [e.source for e in resp.rooms.join[room].timeline.events]
        assert bodies(timeline) == want
        # Alice, joined throughout, reads everything.
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=f&limit=100",
                                 token=alice.access_token)
        assert bodies(body["chunk"]) == ["before", "invited", "joined"]


# What a remote server gets, per visibility, for messages sent before its user was
# invited, while invited, and after the user joined.
SERVER_EXPECTED = {
    "world_readable": {"before": True, "invited": True, "joined": True},
    "shared": {"before": True, "invited": True, "joined": True},
    "invited": {"before": False, "invited": True, "joined": True},
    "joined": {"before": False, "invited": False, "joined": True},
}


@pytest.mark.parametrize("visibility", VISIBILITIES)
async def test_servers_read_per_visibility(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], visibility: str
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "r") as remote, \
            fake_remote(test_ca, tmp_path / "outsider") as outsider:
        room = await LocalRoom(server.services).create(join_rule="invite")
        version = get_room_version("10")
        await room.send("m.room.history_visibility", room.creator, {"history_visibility": visibility}, "")
        ruth = f"@ruth:{remote.server_name}"
        msgs = {"before": await room.message("before")}
        await room.send("m.room.member", room.creator, {"membership": "invite"}, ruth)
        msgs["invited"] = await room.message("invited")
        await room.join_remote(ruth)
        msgs["joined"] = await room.message("joined")
        want = SERVER_EXPECTED[visibility]
        rid = quote(room.room_id, safe="")

        def check(pdu: dict[str, Any], name: str) -> None:
            # Whole, or redacted: same event ID either way (the signatures still verify).
            assert compute_event_id(pdu, version) == msgs[name].event_id
            assert pdu["content"] == ({"msgtype": "m.text", "body": name} if want[name] else {}), (name, pdu)

        for name, event in msgs.items():
            status, body = await remote.get(server, f"{FED}/event/{quote(event.event_id, safe='')}")
            assert status == 200
            check(body["pdus"][0], name)
        latest = msgs["joined"].event_id
        status, body = await remote.get(server, f"{FED}/backfill/{rid}?v={quote(latest)}&limit=50")
        assert status == 200
        by_id = {compute_event_id(p, version): p for p in body["pdus"]}
        for name, event in msgs.items():
            check(by_id[event.event_id], name)
        status, body = await remote.get(server, f"{FED}/get_missing_events/{rid}", "POST", {
            "limit": 50, "earliest_events": [], "latest_events": [latest]})
        assert status == 200
        by_id = {compute_event_id(p, version): p for p in body["events"]}
        for name in ("before", "invited"):
            check(by_id[msgs[name].event_id], name)
        # The state the remote needs is given whatever the visibility (it is in the room).
        status, _ = await remote.get(server, f"{FED}/state_ids/{rid}?event_id={quote(msgs['before'].event_id)}")
        assert status == 200

        # A server with no one in the room: world_readable events only, and no walking.
        status, body = await outsider.get(server, f"{FED}/event/{quote(msgs['before'].event_id, safe='')}")
        if visibility == "world_readable":
            assert status == 200
            check(body["pdus"][0], "before")
        else:
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, _ = await outsider.get(server, f"{FED}/backfill/{rid}?v={quote(latest)}&limit=5")
        assert status == 403

        # Once Ruth has left, her server still reads what it saw, and not what came after
        # (unless the room is world_readable).
        await room.leave_remote(ruth)
        gone = await room.message("after she left")
        status, body = await remote.get(server, f"{FED}/event/{quote(latest, safe='')}")
        assert status == 200 and body["pdus"][0]["content"]["body"] == "joined"
        status, body = await remote.get(server, f"{FED}/event/{quote(gone.event_id, safe='')}")
        assert status == (200 if visibility == "world_readable" else 403)
        status, _ = await remote.get(server, f"{FED}/backfill/{rid}?v={quote(gone.event_id)}&limit=5")
        assert status == 403
