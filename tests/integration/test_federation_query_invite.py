"""The generic federation query and the v1 invite (both engines, real HTTPS, requests
signed by a remote server): an unknown query type gets 404 M_UNRECOGNIZED while the known
ones keep their handlers; ``PUT /v1/invite`` takes the bare event, with its stripped state
in ``unsigned``, checks it as the v2 invite does and answers ``[200, {"event": ...}]``
countersigned; a room version we do not implement (a v1 invite names none: "1") gets 400
M_INCOMPATIBLE_ROOM_VERSION. Rooms 1 and 2 (event IDs chosen by the origin; a v1 invite
naming no version is for room 1) are accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.events.signing import verify_event_signatures
from homeserver.server import RunningServer
from tests.conftest import DatabaseFactory
from tests.remote import FakeRemote, fake_remote
from tests.servers import make_config, running_server

FED = "/_matrix/federation/v1"


@pytest.fixture
async def setup(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, FakeRemote]]:
    cfg = make_config(tmp_path / "ours", await db_factory.new_settings(), test_ca)
    async with running_server(cfg) as ours, fake_remote(test_ca, tmp_path / "remote") as remote:
        yield ours, remote


async def test_unknown_query_type(setup: tuple[RunningServer, FakeRemote]) -> None:
    ours, remote = setup
    for query_type in ("nonsense", "profile_but_not", "x" * 200):
        status, reply = await remote.get(ours, f"{FED}/query/{query_type}?user_id=@a:b")
        assert (status, reply["errcode"]) == (404, "M_UNRECOGNIZED"), query_type
    # The known types still reach their handlers.
    status, reply = await remote.get(ours, f"{FED}/query/directory")
    assert (status, reply["errcode"]) == (400, "M_MISSING_PARAM")
    status, reply = await remote.get(ours, f"{FED}/query/profile")
    assert (status, reply["errcode"]) == (400, "M_MISSING_PARAM")


def invite_v1_path(room_id: str, event_id: str) -> str:
    return f"{FED}/invite/{quote(room_id, safe='')}/{quote(event_id, safe='')}"


@pytest.mark.parametrize("version", ["5", "9", "10", "11"])
async def test_invite_v1(setup: tuple[RunningServer, FakeRemote], version: str) -> None:
    ours, remote = setup
    ours_name = ours.services.config.server_name
    bob = f"@bob:{ours_name}"
    room = remote.room(version)
    room.create_room()
    create = room.events[0]
    stripped = [{"type": "m.room.create", "state_key": "", "sender": create.sender,
                 "content": dict(create.content)}]

    async def put(pdu: dict[str, Any], event_id: str, state: list[dict[str, Any]] | None = None) -> tuple[int, Any]:
        body = dict(pdu, unsigned={"invite_room_state": stripped if state is None else state})
        return await remote.get(ours, invite_v1_path(room.room_id, event_id), "PUT", body)

    # Bad input: not an object, not for a user of ours, not an invite, a wrong event ID.
    status, reply = await remote.get(ours, invite_v1_path(room.room_id, "$x"), "PUT", [1, 2])
    assert (status, reply["errcode"]) == (400, "M_BAD_JSON")
    for event in (
        room.build("m.room.member", room.creator, {"membership": "invite"}, "@bob:elsewhere.example", add=False),
        room.build("m.room.member", room.creator, {"membership": "join"}, bob, add=False),
    ):
        status, reply = await put(event.pdu, event.event_id)
        assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), reply
    good = room.build("m.room.member", room.creator, {"membership": "invite"}, bob)
    status, reply = await put(good.pdu, "$not-this-event")
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM")
    # Without a create event naming the version, a v1 invite is for room version 1: this
    # event of a later version carries no event_id of its own, so it is not one.
    status, reply = await put(good.pdu, good.event_id, state=[])
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM")
    assert await ours.services.rooms.rooms_for_user(bob) == {}

    status, reply = await put(good.pdu, good.event_id)
    assert status == 200, reply
    assert isinstance(reply, list) and reply[0] == 200
    signed = reply[1]["event"]
    key = ours.services.signing_key
    verify_event_signatures(
        signed, good.room_version,
        {ours_name: {key.key_id: key.signing_key.verify_key},
         remote.server_name: {remote.key.key_id: remote.key.signing_key.verify_key}},
    )
    assert key.key_id in signed["signatures"][ours_name]
    assert await ours.services.rooms.rooms_for_user(bob) == {room.room_id: "invite"}
    invite_state = await ours.services.rooms.get_invite_state(bob, room.room_id)
    assert [e["type"] for e in invite_state] == ["m.room.create", "m.room.member"]


@pytest.mark.parametrize("version", ["1", "2"])
async def test_invite_v1_for_rooms_1_and_2(setup: tuple[RunningServer, FakeRemote], version: str) -> None:
    """The rooms the v1 invite was made for: the event carries the ID its origin chose, and
    a room 1 invite may come without a create event naming the version."""
    ours, remote = setup
    ours_name = ours.services.config.server_name
    bob = f"@bob:{ours_name}"
    room = remote.room(version)
    room.create_room()
    invite = room.build("m.room.member", room.creator, {"membership": "invite"}, bob)
    assert invite.event_id == invite.pdu["event_id"] and invite.event_id.endswith(":" + remote.server_name)
    assert isinstance(invite.pdu["prev_events"][0], list)  # [event_id, {"sha256": ...}]
    create = room.events[0]
    stripped = [] if version == "1" else [
        {"type": "m.room.create", "state_key": "", "sender": create.sender, "content": dict(create.content)}]
    body = dict(invite.pdu, unsigned={"invite_room_state": stripped})
    # The path's event ID must be the event's own.
    status, reply = await remote.get(ours, invite_v1_path(room.room_id, "$other:" + remote.server_name), "PUT", body)
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM")
    status, reply = await remote.get(ours, invite_v1_path(room.room_id, invite.event_id), "PUT", body)
    assert status == 200, reply
    signed = reply[1]["event"]
    assert signed["event_id"] == invite.event_id
    key = ours.services.signing_key
    verify_event_signatures(
        signed, invite.room_version,
        {ours_name: {key.key_id: key.signing_key.verify_key},
         remote.server_name: {remote.key.key_id: remote.key.signing_key.verify_key}},
    )
    assert await ours.services.rooms.rooms_for_user(bob) == {room.room_id: "invite"}
