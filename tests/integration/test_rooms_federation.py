"""Two of our servers on loopback (real TLS, keys and databases, both engines): joins over
federation (make_join/send_join), invites both ways, leaves and invite rejections
(make_leave/send_leave), kicks and bans reaching the target's server, join rules and
room versions enforced by the resident server, and repeated joins having one effect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from homeserver.net.client import FederationRequestError
from homeserver.rooms.errors import NotAllowed
from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.clients import server_name as name
from tests.conftest import DatabaseFactory
from tests.outbound_receiver import eventually
from tests.servers import make_config, running_server

FAST = {"outbound": {"backoff_initial_seconds": 0.2, "backoff_ceiling_seconds": 1.0}}


@pytest.fixture
async def pair(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    a_cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra=FAST)
    b_cfg = make_config(tmp_path / "b", await db_factory.new_settings(), test_ca, extra=FAST)
    async with running_server(a_cfg) as a, running_server(b_cfg) as b:
        yield a, b


def user(server: RunningServer, local: str) -> str:
    return f"@{local}:{name(server)}"


async def has_event(server: RunningServer, event_id: str) -> bool:
    stored = await server.services.event_store.get_event(event_id)
    return stored is not None and stored.outcome is Outcome.ACCEPTED


async def membership(server: RunningServer, user_id: str, room_id: str) -> str | None:
    return (await server.services.rooms.get_membership(user_id, room_id))[0]


async def count(server: RunningServer, event_id: str) -> int:
    return int(await server.services.db.fetchval("SELECT COUNT(*) FROM events WHERE event_id = ?", event_id))


@pytest.mark.parametrize("version", ["1", "2", "3", "5", "9", "10", "12"])
async def test_remote_join_and_messages(pair: tuple[RunningServer, RunningServer], version: str) -> None:
    a, b = pair
    alice, bob = user(a, "alice"), user(b, "bob")
    room_id = await a.services.rooms.create_room(alice, room_version=version, preset="public_chat", name="Pub")
    assert await b.services.rooms.join(bob, room_id, via=[name(a)]) == room_id
    # B holds the room's state as A sees it, with bob joined on both sides.
    a_state = await a.services.event_store.get_current_state_ids(room_id)
    b_state = await b.services.event_store.get_current_state_ids(room_id)
    assert a_state == b_state
    assert await membership(a, bob, room_id) == "join" and await membership(b, bob, room_id) == "join"
    assert await b.services.rooms.rooms_for_user(bob) == {room_id: "join"}
    name_event = await b.services.rooms.get_state_event(room_id, "m.room.name", "")
    assert name_event is not None and name_event.content == {"name": "Pub"}
    # A repeated join sends nothing.
    before = await b.services.event_store.max_stream_ordering()
    assert await b.services.rooms.join(bob, room_id, via=[name(a)]) == room_id
    assert await b.services.event_store.max_stream_ordering() == before
    # Bob's message reaches A, stored once; alice's reaches B.
    hello = await b.services.rooms.send_event(bob, room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
    await eventually(lambda: has_event(a, hello.event_id), timeout=20)
    reply = await a.services.rooms.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": "yo"})
    await eventually(lambda: has_event(b, reply.event_id), timeout=20)
    assert await count(a, hello.event_id) == 1 and await count(b, reply.event_id) == 1
    assert reply.prev_events == (hello.event_id,)
    assert await a.services.event_store.get_current_state_ids(room_id) == \
        await b.services.event_store.get_current_state_ids(room_id)
    # Bob leaves: A hears about it.
    await b.services.rooms.leave(bob, room_id)
    await eventually(lambda: _is(a, bob, room_id, "leave"), timeout=20)


async def _is(server: RunningServer, user_id: str, room_id: str, expected: str) -> bool:
    return await membership(server, user_id, room_id) == expected


async def test_invite_over_federation_then_join(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    alice, bob = user(a, "alice"), user(b, "bob")
    room_id = await a.services.rooms.create_room(alice, name="Secret", invite=[bob])
    # B countersigned and stored the invite with stripped state for the client.
    assert await b.services.rooms.rooms_for_user(bob) == {room_id: "invite"}
    state = await b.services.rooms.get_invite_state(bob, room_id)
    types = {(e["type"], e.get("state_key")) for e in state}
    assert ("m.room.create", "") in types and ("m.room.name", "") in types and ("m.room.member", bob) in types
    assert all(set(e) <= {"type", "state_key", "content", "sender"} for e in state)
    invite = await a.services.rooms.get_state_event(room_id, "m.room.member", bob)
    assert invite is not None and set(invite.pdu["signatures"]) == {name(a), name(b)}
    invites = await b.services.rooms.invites_since(bob)
    assert [i.event_id for i in invites] == [invite.event_id]
    # Invite-only room: bob may join now, through the inviter's server (no via needed).
    assert await b.services.rooms.join(bob, room_id) == room_id
    assert await membership(b, bob, room_id) == "join" and await membership(a, bob, room_id) == "join"
    assert await b.services.rooms.rooms_for_user(bob) == {room_id: "join"}


async def test_reject_remote_invite(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    alice, bob = user(a, "alice"), user(b, "bob")
    room_id = await a.services.rooms.create_room(alice, room_version="11")
    await a.services.rooms.invite(alice, room_id, bob)
    assert await membership(b, bob, room_id) == "invite"
    await b.services.rooms.leave(bob, room_id)  # make_leave / send_leave through A
    assert await membership(a, bob, room_id) == "leave"
    assert await b.services.rooms.rooms_for_user(bob) == {room_id: "leave"}
    # B never joined: it holds no event of the room.
    assert await b.services.event_store.get_room_version(room_id) is None


async def test_join_refused_by_join_rules(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    alice, bob = user(a, "alice"), user(b, "bob")
    room_id = await a.services.rooms.create_room(alice, room_version="12")  # private_chat: invite only
    with pytest.raises(NotAllowed):
        await b.services.rooms.join(bob, room_id, via=[name(a)])
    assert await membership(a, bob, room_id) is None
    assert await b.services.rooms.rooms_for_user(bob) == {}


async def test_make_join_without_common_version(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    alice, bob = user(a, "alice"), user(b, "bob")
    room_id = await a.services.rooms.create_room(alice, room_version="11", preset="public_chat")
    path = f"/_matrix/federation/v1/make_join/{quote(room_id, safe='')}/{quote(bob, safe='')}"
    with pytest.raises(FederationRequestError) as e:
        await b.services.federation_client.get_json(name(a), path, query={"ver": ["1", "2"]})
    assert e.value.status == 400 and e.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
    assert isinstance(e.value.body, dict) and e.value.body["room_version"] == "11"
    # No ver at all means "1": also incompatible. A user of another server: forbidden.
    with pytest.raises(FederationRequestError) as e:
        await b.services.federation_client.get_json(name(a), path)
    assert e.value.errcode == "M_INCOMPATIBLE_ROOM_VERSION"
    wrong = f"/_matrix/federation/v1/make_join/{quote(room_id, safe='')}/{quote(alice, safe='')}"
    with pytest.raises(FederationRequestError) as e:
        await b.services.federation_client.get_json(name(a), wrong, query={"ver": ["11"]})
    assert e.value.status == 403
    ok = await b.services.federation_client.get_json(name(a), path, query={"ver": ["10", "11"]})
    assert ok["room_version"] == "11" and ok["event"]["content"] == {"membership": "join"}


async def test_send_join_repeated_has_one_effect(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    alice, bob = user(a, "alice"), user(b, "bob")
    room_id = await a.services.rooms.create_room(alice, preset="public_chat")
    await b.services.rooms.join(bob, room_id, via=[name(a)])
    _, join_id = await b.services.rooms.get_membership(bob, room_id)
    assert join_id is not None
    join = await b.services.event_store.get_event(join_id)
    assert join is not None
    before = await a.services.event_store.max_stream_ordering()
    path = f"/_matrix/federation/v2/send_join/{quote(room_id, safe='')}/{quote(join_id, safe='')}"
    reply = await b.services.federation_client.put_json(name(a), path, join.event.pdu,
                                                       query={"omit_members": "true"})
    assert reply["members_omitted"] is False and name(a) in reply["servers_in_room"]
    assert ("m.room.member", bob) not in {(p["type"], p.get("state_key")) for p in reply["state"]}
    assert any(p["type"] == "m.room.member" and p["state_key"] == alice for p in reply["state"])
    assert await a.services.event_store.max_stream_ordering() == before
    assert await count(a, join_id) == 1
    # A tampered join is refused with M_INVALID_PARAM.
    bad = dict(join.event.pdu, content={"membership": "join", "displayname": "x"})
    with pytest.raises(FederationRequestError) as e:
        await b.services.federation_client.put_json(name(a), path, bad)
    assert e.value.status == 400 and e.value.errcode == "M_INVALID_PARAM"


async def test_kick_and_ban_reach_the_target_server(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    alice, bob, bert = user(a, "alice"), user(b, "bob"), user(b, "bert")
    room_id = await a.services.rooms.create_room(alice, preset="public_chat")
    await b.services.rooms.join(bob, room_id, via=[name(a)])
    await b.services.rooms.join(bert, room_id, via=[name(a)])  # a local join on B now
    await eventually(lambda: _is(a, bert, room_id, "join"), timeout=20)
    # A kick reaches B.
    await a.services.rooms.kick(alice, room_id, bob, reason="out")
    _, kick_id = await a.services.rooms.get_membership(bob, room_id)
    assert kick_id is not None
    await eventually(lambda: has_event(b, kick_id), timeout=20)
    assert await membership(b, bob, room_id) == "leave"
    # Bert, B's last member, leaves; a ban of bob still reaches B.
    await b.services.rooms.leave(bert, room_id)
    await eventually(lambda: _is(a, bert, room_id, "leave"), timeout=20)
    await a.services.rooms.ban(alice, room_id, bob, reason="spam")
    _, ban_id = await a.services.rooms.get_membership(bob, room_id)
    assert ban_id is not None
    await eventually(lambda: has_event(b, ban_id), timeout=20)
    assert await membership(b, bob, room_id) == "ban"
    with pytest.raises(NotAllowed):
        await b.services.rooms.join(bob, room_id, via=[name(a)])
