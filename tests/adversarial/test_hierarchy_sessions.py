"""The space hierarchy keeps each walk's rest in memory under its ``next_batch`` (at most
1,000 walks in all). One user asking for page after page could push every other user's
walks out; now a user's own older walks make room first (at most 20 each)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from homeserver.rooms import space_walk
from tests.clients import client_server, raw
from tests.conftest import DatabaseFactory

C = "/_matrix/client/v3"


async def test_one_user_cannot_evict_the_walks_of_others(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "s", test_ca) as server:
        tokens = {}
        for name in ("alice", "bob"):
            status, body = await raw(server, "POST", C + "/register", json={
                "username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}})
            assert status == 200, body
            tokens[name] = body["access_token"]
        status, body = await raw(server, "POST", C + "/createRoom", token=tokens["alice"], json={
            "preset": "public_chat", "creation_content": {"type": "m.space"}})
        space = body["room_id"]
        for _ in range(3):
            status, body = await raw(server, "POST", C + "/createRoom", token=tokens["alice"],
                                     json={"preset": "public_chat"})
            child = body["room_id"]
            status, body = await raw(server, "PUT", f"{C}/rooms/{quote(space)}/state/m.space.child/{quote(child)}",
                                     token=tokens["alice"], json={"via": [server.services.config.server_name]})
            assert status == 200, body
        hierarchy = f"/_matrix/client/v1/rooms/{quote(space)}/hierarchy?limit=1"

        async def first_page(token: str) -> str:
            status, body = await raw(server, "GET", hierarchy, token=token)
            assert status == 200, body
            return str(body["next_batch"])

        bobs = await first_page(tokens["bob"])
        alices = [await first_page(tokens["alice"]) for _ in range(space_walk.MAX_SESSIONS_PER_USER + 5)]
        status, body = await raw(server, "GET", f"{hierarchy}&from={quote(bobs)}", token=tokens["bob"])
        assert status == 200, body
        status, body = await raw(server, "GET", f"{hierarchy}&from={quote(alices[-1])}", token=tokens["alice"])
        assert status == 200, body
        status, body = await raw(server, "GET", f"{hierarchy}&from={quote(alices[0])}", token=tokens["alice"])
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), body
