"""Who may read a room through the client read endpoints, on SQLite and PostgreSQL: a
user banned before ever joining, or one whose invite ended without a join, reads nothing
(403 M_FORBIDDEN from /state, /state/{type}/{key}, /members, /joined_members,
/messages, /context and /event; /sync's leave section shows only their own member event,
with no state); a user banned after joining reads nothing either; a user who joined and
left reads up to their leave."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from nio import AsyncClient

from homeserver.server import RunningServer
from tests.clients import client_server, msg, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
INCLUDE_LEAVE = quote('{"room":{"include_leave":true}}', safe="")


async def _send(server: RunningServer, who: AsyncClient, room: str, body: str) -> str:
    status, sent = await raw(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/{body.replace(' ', '_')}",
                             token=who.access_token, json=msg(body))
    assert status == 200, sent
    return str(sent["event_id"])


async def _member(server: RunningServer, actor: AsyncClient, room: str, action: str, target: str) -> None:
    status, body = await raw(server, "POST", f"{V3}/rooms/{room}/{action}", token=actor.access_token,
                             json={"user_id": target})
    assert status == 200, body


def _reads(room: str, event_id: str) -> list[str]:
    r = f"{V3}/rooms/{room}"
    return [
        f"{r}/state", f"{r}/state/m.room.create", f"{r}/state/m.room.create/", f"{r}/state/m.room.name/",
        f"{r}/members", f"{r}/joined_members", f"{r}/messages?dir=b", f"{r}/messages?dir=f",
        f"{r}/context/{event_id}", f"{r}/event/{event_id}",
    ]


async def _all_forbidden(server: RunningServer, who: AsyncClient, room: str, event_id: str) -> None:
    for path in _reads(room, event_id):
        status, body = await raw(server, "GET", path, token=who.access_token)
        errcode = body.get("errcode") if isinstance(body, dict) else None
        assert (status, errcode) == (403, "M_FORBIDDEN"), (path, status, body)


async def _leave_section(server: RunningServer, who: AsyncClient, room: str) -> dict[str, Any]:
    status, synced = await raw(server, "GET", f"{V3}/sync?timeout=0&filter={INCLUDE_LEAVE}", token=who.access_token)
    assert status == 200, synced
    return dict(synced["rooms"]["leave"][room])


async def test_users_who_never_joined_read_nothing(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob, \
            nio_user(server, "carol") as carol, nio_user(server, "dave") as dave:
        status, created = await raw(server, "POST", f"{V3}/createRoom", token=alice.access_token,
                                    json={"name": "Secret", "topic": "plans", "preset": "public_chat"})
        assert status == 200, created
        room = created["room_id"]
        secret = await _send(server, alice, room, "the secret")

        # Bob: banned before he ever joined.
        await _member(server, alice, room, "ban", bob.user_id)
        await _all_forbidden(server, bob, room, secret)
        section = await _leave_section(server, bob, room)
        assert section["state"]["events"] == []
        assert [(e["type"], e["content"]["membership"]) for e in section["timeline"]["events"]] == [
            ("m.room.member", "ban")]

        # Carol: invited, then rejected the invite; never joined.
        await _member(server, alice, room, "invite", carol.user_id)
        status, body = await raw(server, "POST", f"{V3}/rooms/{room}/leave", token=carol.access_token, json={})
        assert status == 200, body
        await _all_forbidden(server, carol, room, secret)
        section = await _leave_section(server, carol, room)
        assert section["state"]["events"] == []
        assert all(e["type"] == "m.room.member" for e in section["timeline"]["events"])

        # Dave: joined, then left; he reads up to his leave, and nothing after it.
        status, body = await raw(server, "POST", f"{V3}/rooms/{room}/join", token=dave.access_token, json={})
        assert status == 200, body
        seen = await _send(server, alice, room, "while dave is here")
        status, body = await raw(server, "POST", f"{V3}/rooms/{room}/leave", token=dave.access_token, json={})
        assert status == 200, body
        after = await _send(server, alice, room, "after dave left")
        status, state = await raw(server, "GET", f"{V3}/rooms/{room}/state", token=dave.access_token)
        assert status == 200 and any(e["type"] == "m.room.topic" for e in state), state
        status, event = await raw(server, "GET", f"{V3}/rooms/{room}/event/{seen}", token=dave.access_token)
        assert status == 200 and event["content"]["body"] == "while dave is here", event
        status, body = await raw(server, "GET", f"{V3}/rooms/{room}/event/{after}", token=dave.access_token)
        assert status == 404, body
        status, page = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=b", token=dave.access_token)
        assert status == 200, page
        bodies = [e["content"].get("body") for e in page["chunk"]]
        assert "while dave is here" in bodies and "after dave left" not in bodies
        section = await _leave_section(server, dave, room)
        assert any(e["content"].get("body") == "while dave is here" for e in section["timeline"]["events"])

        # Dave rejoins and is banned: he reads nothing any more.
        status, body = await raw(server, "POST", f"{V3}/rooms/{room}/join", token=dave.access_token, json={})
        assert status == 200, body
        await _member(server, alice, room, "ban", dave.user_id)
        await _all_forbidden(server, dave, room, seen)
