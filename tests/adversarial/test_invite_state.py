"""Invites from another server cannot fill our database or a user's /sync, on SQLite and
PostgreSQL: the stripped state of one invite is capped in entries and bytes (400
M_TOO_LARGE), the invites pending from one server are capped over all our users and per
user (403 M_FORBIDDEN); a refused invite leaves nothing stored. A resident's
knock_room_state is cut to the same caps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.config import InvitesConfig
from homeserver.rooms.service import cut_stripped_state, stripped_size
from homeserver.server import RunningServer
from tests.clients import nio_user, raw
from tests.conftest import DatabaseFactory
from tests.remote import FakeRemote, RemoteRoom, fake_remote
from tests.servers import make_config, running_server

LIMITS = {"max_state_events": 10, "max_state_bytes": 4096, "max_pending_per_server": 3,
          "max_pending_per_server_per_user": 2}


@pytest.fixture
async def setup(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, FakeRemote]]:
    cfg = make_config(tmp_path / "ours", await db_factory.new_settings(), test_ca, extra={"invites": LIMITS})
    async with running_server(cfg) as ours, fake_remote(test_ca, tmp_path / "remote") as remote:
        yield ours, remote


async def _invite(
    ours: RunningServer, remote: FakeRemote, user_id: str, state: list[dict[str, Any]] | None = None,
    room: RemoteRoom | None = None,
) -> tuple[int, Any, RemoteRoom]:
    if room is None:
        room = remote.room("11")
        room.create_room()
    event = room.build("m.room.member", room.creator, {"membership": "invite"}, user_id)
    body = {"room_version": "11", "event": event.pdu,
            "invite_room_state": state if state is not None else [room.events[0].pdu]}
    path = f"/_matrix/federation/v2/invite/{quote(room.room_id, safe='')}/{quote(event.event_id, safe='')}"
    status, reply = await remote.get(ours, path, "PUT", body)
    return status, reply, room


async def test_invite_state_is_capped(setup: tuple[RunningServer, FakeRemote]) -> None:
    ours, remote = setup
    async with nio_user(ours, "bob") as bob:
        rooms = ours.services.rooms
        create = remote.room("11")
        create.create_room()
        base = [create.events[0].pdu]

        # Too many entries (11 > 10).
        many = [*base, *({"type": "m.room.name", "state_key": str(i), "content": {"name": "x"},
                          "sender": create.creator} for i in range(10))]
        status, reply, _ = await _invite(ours, remote, bob.user_id, many, create)
        assert (status, reply["errcode"]) == (400, "M_TOO_LARGE"), reply
        # Too many bytes (a 5 KB topic > 4096 bytes in all).
        big = [*base, {"type": "m.room.topic", "state_key": "", "content": {"topic": "t" * 5000},
                       "sender": create.creator}]
        status, reply, _ = await _invite(ours, remote, bob.user_id, big, create)
        assert (status, reply["errcode"]) == (400, "M_TOO_LARGE"), reply
        assert await rooms.memberships.get_invite(bob.user_id, create.room_id) is None
        assert await rooms.rooms_for_user(bob.user_id) == {}

        # Within the caps: stored, and shown by /sync.
        fits = [*base, {"type": "m.room.topic", "state_key": "", "content": {"topic": "t" * 1000},
                        "sender": create.creator}]
        status, reply, _ = await _invite(ours, remote, bob.user_id, fits, create)
        assert status == 200, reply
        status, synced = await raw(ours, "GET", "/_matrix/client/v3/sync?timeout=0", token=bob.access_token)
        assert status == 200, synced
        shown = synced["rooms"]["invite"][create.room_id]["invite_state"]["events"]
        assert [e["type"] for e in shown] == ["m.room.create", "m.room.topic", "m.room.member"]


async def test_pending_invites_per_server_are_capped(setup: tuple[RunningServer, FakeRemote]) -> None:
    ours, remote = setup
    name = ours.services.config.server_name
    bob, carol, dave = (f"@{u}:{name}" for u in ("bob", "carol", "dave"))
    memberships = ours.services.rooms.memberships

    first = []
    for _ in range(2):
        status, reply, room = await _invite(ours, remote, bob)
        assert status == 200, reply
        first.append(room)
    # A third for Bob: over the per-user cap (2).
    status, reply, refused = await _invite(ours, remote, bob)
    assert (status, reply["errcode"]) == (403, "M_FORBIDDEN"), reply
    assert await memberships.get_invite(bob, refused.room_id) is None
    # The same room again replaces its invite: still allowed.
    status, reply, _ = await _invite(ours, remote, bob, room=first[0])
    assert status == 200, reply
    # Carol: the server's third pending invite (the cap is 3); Dave: a fourth, refused.
    status, reply, _ = await _invite(ours, remote, carol)
    assert status == 200, reply
    status, reply, refused = await _invite(ours, remote, dave)
    assert (status, reply["errcode"]) == (403, "M_FORBIDDEN"), reply
    assert await memberships.get_invite(dave, refused.room_id) is None
    assert len(await memberships.invites_for_user(bob)) == 2


def test_knock_room_state_is_cut_to_the_caps() -> None:
    limits = InvitesConfig(max_state_events=3, max_state_bytes=300)
    entries: list[dict[str, Any]] = [
        {"type": "m.room.create", "state_key": "", "content": {"room_version": "11"}, "sender": "@a:x",
         "signatures": {"x": {"ed25519:a": "s" * 500}}},
        {"type": "m.room.topic", "state_key": "", "content": {"topic": "t" * 400}, "sender": "@a:x"},
        {"type": "m.room.name", "state_key": "", "content": {"name": "n"}, "sender": "@a:x"},
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}, "sender": "@a:x"},
        {"type": "m.room.avatar", "state_key": "", "content": {"url": "mxc://x/y"}, "sender": "@a:x"},
    ]
    cut = cut_stripped_state(entries, limits)
    # Stripped (no signatures), the oversized topic left out, at most 3 entries.
    assert [e["type"] for e in cut] == ["m.room.create", "m.room.name", "m.room.join_rules"]
    assert "signatures" not in cut[0]
    assert stripped_size(cut) <= limits.max_state_bytes
