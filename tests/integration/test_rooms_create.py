"""Room creation on a real server (both engines): the spec's event sequence per room
version and preset, room v12's hash room ID and infinite-power creators, every event
passing the auth rules against the state before it, and local membership changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from homeserver.events.auth import check_auth_rules
from homeserver.events.hashes import room_id_for_create
from homeserver.events.signing import verify_event_signatures
from homeserver.rooms.errors import BadRoomRequest, NotAllowed, RoomNotFound, UnsupportedVersion
from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.servers import make_config, running_server


@pytest.fixture
async def server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[RunningServer]:
    cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca)
    async with running_server(cfg) as a:
        yield a


def user(server: RunningServer, name: str) -> str:
    return f"@{name}:{server.services.config.server_name}"


async def room_events(server: RunningServer, room_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    rows = await server.services.db.fetchall(
        "SELECT event_id FROM events WHERE room_id = ? ORDER BY stream_ordering", room_id
    )
    stored = await server.services.event_store.get_events(r[0] for r in rows)
    return [(stored[r[0]].event.type, stored[r[0]].event.state_key, dict(stored[r[0]].event.content)) for r in rows]


async def assert_chain_valid(server: RunningServer, room_id: str) -> None:
    """Every event is accepted, signed by us, and passes auth against its state before."""
    store = server.services.event_store
    rows = await server.services.db.fetchall("SELECT event_id FROM events WHERE room_id = ?", room_id)
    key = server.services.signing_key
    keys = {server.services.config.server_name: {key.key_id: key.signing_key.verify_key}}
    for (event_id,) in rows:
        stored = await store.get_event(event_id)
        assert stored is not None and stored.outcome is Outcome.ACCEPTED
        verify_event_signatures(stored.event.pdu, stored.event.room_version, keys)
        before = await store.get_state_ids_before(event_id)
        assert before is not None
        events = await store.get_events(before.values())
        check_auth_rules(stored.event, {k: events[e].event for k, e in before.items()})


@pytest.mark.parametrize("version", ["1", "2", "3", "5", "9", "10", "11", "12"])
async def test_private_room_sequence(server: RunningServer, version: str) -> None:
    rooms = server.services.rooms
    alice, bob = user(server, "alice"), user(server, "bob")
    room_id = await rooms.create_room(alice, room_version=version, name="Room", topic="About", invite=[bob],
                                      initial_state=[{"type": "m.room.encryption", "state_key": "",
                                                      "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    events = await room_events(server, room_id)
    types = [(t, sk) for t, sk, _ in events]
    # The spec's order: create, creator join, power levels, preset, initial_state, name, topic, invites.
    assert types == [
        ("m.room.create", ""), ("m.room.member", alice), ("m.room.power_levels", ""),
        ("m.room.join_rules", ""), ("m.room.history_visibility", ""), ("m.room.guest_access", ""),
        ("m.room.encryption", ""), ("m.room.name", ""), ("m.room.topic", ""), ("m.room.member", bob),
    ]
    content = {(t, sk): c for t, sk, c in events}
    create = content[("m.room.create", "")]
    assert create["room_version"] == version
    assert ("creator" in create) is (int(version) <= 10)
    pl = content[("m.room.power_levels", "")]
    if version == "12":
        assert alice not in pl["users"]  # creators have infinite power, never listed
        assert pl["events"]["m.room.tombstone"] > pl["state_default"]
    else:
        assert pl["users"][alice] == 100
    assert content[("m.room.join_rules", "")] == {"join_rule": "invite"}
    assert content[("m.room.guest_access", "")] == {"guest_access": "can_join"}
    assert content[("m.room.topic", "")]["topic"] == "About"
    assert content[("m.room.member", bob)]["membership"] == "invite"
    await assert_chain_valid(server, room_id)
    invite = await rooms.get_state_event(room_id, "m.room.member", bob)
    assert invite is not None
    assert await rooms.get_membership(bob, room_id) == ("invite", invite.event_id)
    assert await rooms.rooms_for_user(bob) == {room_id: "invite"}
    assert await rooms.rooms_for_user(alice) == {room_id: "join"}


async def test_v12_room_id_is_create_hash(server: RunningServer) -> None:
    alice = user(server, "alice")
    room_id = await server.services.rooms.create_room(alice, preset="public_chat")
    create = await server.services.rooms.get_state_event(room_id, "m.room.create", "")
    assert create is not None and "room_id" not in create.pdu
    assert room_id == room_id_for_create(create.pdu, create.room_version)
    assert ":" not in room_id and create.room_version.identifier == "12"
    state = await server.services.rooms.get_current_state(room_id)
    assert state[("m.room.join_rules", "")].content == {"join_rule": "public"}
    assert state[("m.room.guest_access", "")].content == {"guest_access": "forbidden"}
    await assert_chain_valid(server, room_id)


@pytest.mark.parametrize("version", ["1", "5", "9", "11", "12"])
async def test_trusted_private_chat_and_override(server: RunningServer, version: str) -> None:
    alice, bob = user(server, "alice"), user(server, "bob")
    room_id = await server.services.rooms.create_room(
        alice, room_version=version, preset="trusted_private_chat", invite=[bob], is_direct=True,
        power_level_content_override={"events_default": 10},
    )
    state = await server.services.rooms.get_current_state(room_id)
    pl = state[("m.room.power_levels", "")].content
    assert pl["events_default"] == 10
    if version == "12":
        assert state[("m.room.create", "")].content["additional_creators"] == [bob]
        assert bob not in pl["users"]
    else:
        assert pl["users"][bob] == 100
    assert state[("m.room.member", bob)].content == {"membership": "invite", "is_direct": True}
    await assert_chain_valid(server, room_id)


async def test_visibility_public_defaults_to_public_chat(server: RunningServer) -> None:
    alice = user(server, "alice")
    room_id = await server.services.rooms.create_room(alice, visibility="public", room_version="10")
    join_rules = await server.services.rooms.get_state_event(room_id, "m.room.join_rules", "")
    assert join_rules is not None and join_rules.content["join_rule"] == "public"


async def test_bad_requests(server: RunningServer) -> None:
    rooms = server.services.rooms
    alice = user(server, "alice")
    with pytest.raises(UnsupportedVersion):
        await rooms.create_room(alice, room_version="13")
    with pytest.raises(BadRoomRequest):
        await rooms.create_room(alice, preset="party")
    with pytest.raises(BadRoomRequest):
        await rooms.create_room(alice, initial_state=[{"type": "m.room.member", "state_key": alice,
                                                       "content": {"membership": "join"}}])
    with pytest.raises(BadRoomRequest):
        await rooms.create_room("@alice:elsewhere.example")
    with pytest.raises(RoomNotFound):
        await rooms.send_event(alice, "!nope:elsewhere.example", "m.room.message", {"body": "x"})
    assert await server.services.db.fetchval("SELECT COUNT(*) FROM events") == 0


async def test_local_membership_and_power_levels(server: RunningServer) -> None:
    rooms = server.services.rooms
    alice, bob, carol = user(server, "alice"), user(server, "bob"), user(server, "carol")
    room_id = await rooms.create_room(alice, room_version="11")  # private_chat: invite only
    # Invite-only: a join without an invite is refused by the join rule (4.3.7).
    with pytest.raises(NotAllowed) as e:
        await rooms.join(bob, room_id)
    assert e.value.rule == "4.3.7"
    await rooms.invite(alice, room_id, bob)
    await rooms.invite(alice, room_id, bob)  # already invited: nothing sent
    assert await rooms.join(bob, room_id) == room_id
    before = await server.services.event_store.max_stream_ordering()
    assert await rooms.join(bob, room_id) == room_id  # idempotent
    assert await server.services.event_store.max_stream_ordering() == before
    # Bob (power 0) may not kick, ban, or change the name.
    with pytest.raises(NotAllowed):
        await rooms.kick(bob, room_id, alice)
    with pytest.raises(NotAllowed) as e:
        await rooms.send_event(bob, room_id, "m.room.name", {"name": "mine"}, "")
    assert e.value.rule == "7"
    message = await rooms.send_event(bob, room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
    assert message.prev_events and message.depth > 1
    await rooms.ban(alice, room_id, bob, reason="spam")
    assert (await rooms.get_membership(bob, room_id))[0] == "ban"
    with pytest.raises(NotAllowed):
        await rooms.join(bob, room_id)
    await rooms.unban(alice, room_id, bob)
    assert (await rooms.get_membership(bob, room_id))[0] == "leave"
    await rooms.invite(alice, room_id, carol)
    await rooms.leave(carol, room_id)  # rejecting a local invite
    assert (await rooms.get_membership(carol, room_id))[0] == "leave"
    await rooms.forget(carol, room_id)
    assert room_id not in await rooms.rooms_for_user(carol)
    with pytest.raises(BadRoomRequest):
        await rooms.forget(alice, room_id)
    await assert_chain_valid(server, room_id)
