"""Room tags round-trip and reach /sync as the room's m.tag account data (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from homeserver.server import RunningServer
from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"


async def _sync(server: RunningServer, token: str, since: str | None = None) -> dict[str, Any]:
    path = f"{V3}/sync?filter={quote(json.dumps({'room': {'timeline': {'limit': 1}}}))}"
    if since is not None:
        path += f"&since={quote(since)}"
    status, body = await raw(server, "GET", path, token=token)
    assert status == 200, body
    return dict(body)


def _tag_event(body: dict[str, Any], room: str) -> dict[str, Any] | None:
    section = body["rooms"]["join"].get(room)
    if section is None:
        return None
    return next((e for e in section["account_data"]["events"] if e["type"] == "m.tag"), None)


async def test_tags_round_trip_and_sync(db_factory: DatabaseFactory, tmp_path: Path,
                                        test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as s, nio_user(s, "alice") as alice, \
            nio_user(s, "bob") as bob:
        token = alice.access_token
        room = (await raw(s, "POST", f"{V3}/createRoom", token=token, json={}))[1]["room_id"]
        tags = f"{V3}/user/{alice.user_id}/rooms/{room}/tags"
        assert await raw(s, "GET", tags, token=token) == (200, {"tags": {}})
        first = await _sync(s, token)

        assert (await raw(s, "PUT", f"{tags}/m.favourite", token=token, json={"order": 0.25}))[0] == 200
        assert (await raw(s, "PUT", f"{tags}/u.work", token=token, json={}))[0] == 200
        assert await raw(s, "GET", tags, token=token) == (
            200, {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
        step = await _sync(s, token, first["next_batch"])
        assert _tag_event(step, room) == {"type": "m.tag",
                                          "content": {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}}

        assert (await raw(s, "DELETE", f"{tags}/u.work", token=token))[0] == 200
        assert await raw(s, "GET", tags, token=token) == (200, {"tags": {"m.favourite": {"order": 0.25}}})
        step = await _sync(s, token, step["next_batch"])
        assert _tag_event(step, room) == {"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}}}}
        # An initial sync carries the tags too.
        assert _tag_event(await _sync(s, token), room) is not None

        # Bad order, other users' tags.
        for bad in ({"order": 2}, {"order": "high"}, {"order": True}):
            status, reply = await raw(s, "PUT", f"{tags}/x", token=token, json=bad)
            assert (status, reply["errcode"]) == (400, "M_BAD_JSON"), bad
        status, reply = await raw(s, "GET", tags, token=bob.access_token)
        assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
        status, reply = await raw(s, "PUT", f"{tags}/x", token=bob.access_token, json={})
        assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
