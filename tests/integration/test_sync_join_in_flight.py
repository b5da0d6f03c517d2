"""/sync and a join committed while the sync reads (homeserver/client_api/sync_settle.py): the
join lands after the sync has read the user's memberships but before it reads the positions of
its next token. That response shows the room as joined, in full (before, it showed the invite,
and no later response ever showed the join: Element's SDK stayed on the invite). The same for an
invite received over federation in that window (before, no response ever showed it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homeserver.server import RunningServer
from tests.clients import client_server, eventually, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"


@pytest.mark.parametrize("kind", ["incremental", "initial"])
async def test_a_join_committed_during_a_sync_is_in_that_sync(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], kind: str
) -> None:
    async with client_server(db_factory, tmp_path / "hs", test_ca) as server:
        tokens: dict[str, str] = {}
        ids: dict[str, str] = {}
        for name in ("alice", "bob"):
            status, body = await raw(server, "POST", f"{V3}/register", json={
                "username": name, "password": "join in flight", "auth": {"type": "m.login.dummy"}})
            assert status == 200, body
            tokens[name], ids[name] = body["access_token"], body["user_id"]
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=tokens["alice"],
                                 json={"preset": "private_chat", "name": "In flight", "invite": [ids["bob"]]})
        assert status == 200, body
        room_id = body["room_id"]
        status, first = await raw(server, "GET", f"{V3}/sync", token=tokens["bob"])
        assert status == 200 and room_id in first["rooms"]["invite"], first

        # Bob's join is committed right after the next sync has read his memberships.
        rooms = server.services.rooms
        original = rooms.rooms_for_user
        joined: list[Any] = []

        async def read_then_join(user_id: str) -> dict[str, str]:
            found = await original(user_id)
            if user_id == ids["bob"] and not joined:
                joined.append(await raw(server, "POST", f"{V3}/rooms/{room_id}/join", token=tokens["bob"], json={}))
            return found

        rooms.rooms_for_user = read_then_join  # type: ignore[method-assign]
        query = f"?since={first['next_batch']}&timeout=0" if kind == "incremental" else ""
        status, second = await raw(server, "GET", f"{V3}/sync{query}", token=tokens["bob"])
        rooms.rooms_for_user = original  # type: ignore[method-assign]
        assert joined and joined[0][0] == 200, joined
        assert status == 200, second
        section = second["rooms"].get("join", {}).get(room_id)
        assert section is not None, second["rooms"]
        assert room_id not in second["rooms"].get("invite", {})
        state_types = {e["type"] for e in section["state"]["events"] + section["timeline"]["events"]}
        assert {"m.room.create", "m.room.name"} <= state_types, state_types
        assert section["summary"]["m.joined_member_count"] == 2


async def test_a_remote_invite_received_during_a_sync_is_shown(pair: tuple[RunningServer, RunningServer]) -> None:
    """The same for an invite received over federation while the sync reads: it is in that
    response or the next (before, in neither)."""
    a, b = pair
    alice, bob = await register(a, "alice"), await register(b, "bob")
    status, first = await raw(b, "GET", f"{V3}/sync", token=bob[0])
    assert status == 200, first
    rooms = b.services.rooms
    original = rooms.rooms_for_user
    created: list[str] = []

    async def read_then_invited(user_id: str) -> dict[str, str]:
        found = await original(user_id)
        if user_id == bob[1] and not created:
            status, body = await raw(a, "POST", f"{V3}/createRoom", token=alice[0],
                                     json={"preset": "private_chat", "invite": [bob[1]]})
            assert status == 200, body
            created.append(body["room_id"])

            async def arrived() -> bool:
                return (await original(bob[1])).get(body["room_id"]) == "invite"
            await eventually(arrived)
        return found

    rooms.rooms_for_user = read_then_invited  # type: ignore[method-assign]
    status, second = await raw(b, "GET", f"{V3}/sync?since={first['next_batch']}&timeout=0", token=bob[0])
    rooms.rooms_for_user = original  # type: ignore[method-assign]
    assert status == 200 and created, second
    status, third = await raw(b, "GET", f"{V3}/sync?since={second['next_batch']}&timeout=0", token=bob[0])
    assert status == 200, third
    shown = [created[0] in s["rooms"].get("invite", {}) for s in (second, third)]
    assert any(shown), (second["rooms"], third["rooms"])


async def register(server: RunningServer, name: str) -> tuple[str, str]:
    status, body = await raw(server, "POST", f"{V3}/register", json={
        "username": name, "password": "join in flight", "auth": {"type": "m.login.dummy"}})
    assert status == 200, body
    return body["access_token"], body["user_id"]
