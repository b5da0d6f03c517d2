"""What our server refuses at the membership endpoints and in what other servers give it:
malformed or misdirected invites (PUT /v2/invite) get the spec's errors and leave nothing
stored; a good one is countersigned and shown to the invitee; state and auth chains
returned by a resident are checked event by event (signatures, auth) before use; the
profile query answers 404 without a profile source. Both engines, real HTTPS."""

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


@pytest.fixture
async def setup(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, FakeRemote]]:
    cfg = make_config(tmp_path / "ours", await db_factory.new_settings(), test_ca)
    async with running_server(cfg) as ours, fake_remote(test_ca, tmp_path / "remote") as remote:
        yield ours, remote


def invite_path(room_id: str, event_id: str) -> str:
    return f"/_matrix/federation/v2/invite/{quote(room_id, safe='')}/{quote(event_id, safe='')}"


async def test_inbound_invites(setup: tuple[RunningServer, FakeRemote]) -> None:
    ours, remote = setup
    ours_name = ours.services.config.server_name
    bob = f"@bob:{ours_name}"
    room = remote.room("11")
    room.create_room()
    state = [e.pdu for e in room.events[:1]]

    async def put(event_pdu: dict[str, Any], event_id: str, **body: Any) -> tuple[int, Any]:
        content = {"room_version": "11", "event": event_pdu, "invite_room_state": state, **body}
        return await remote.get(ours, invite_path(room.room_id, event_id), "PUT", content)

    # Not a user of ours; not an invite; sender not of the origin; wrong event ID.
    bad = [
        room.build("m.room.member", room.creator, {"membership": "invite"}, "@bob:elsewhere.example", add=False),
        room.build("m.room.member", room.creator, {"membership": "join"}, bob, add=False),
        room.build("m.room.member", "@eve:evil.example", {"membership": "invite"}, bob, add=False),
    ]
    for event in bad:
        status, reply = await put(event.pdu, event.event_id)
        assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), reply
    good = room.build("m.room.member", room.creator, {"membership": "invite"}, bob)
    status, reply = await put(good.pdu, "$not-this-event")
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM")
    status, reply = await put(good.pdu, good.event_id, room_version="13")
    assert (status, reply["errcode"]) == (400, "M_INCOMPATIBLE_ROOM_VERSION")
    tampered = dict(good.pdu, signatures={remote.server_name: {remote.key.key_id: "AAAA"}})
    status, reply = await put(tampered, good.event_id)
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM")
    assert await ours.services.rooms.rooms_for_user(bob) == {}

    status, reply = await put(good.pdu, good.event_id)
    assert status == 200
    signed = reply["event"]
    key = ours.services.signing_key
    verify_event_signatures(  # our signature covers the event (required signer: the sender's server)
        signed, good.room_version,
        {ours_name: {key.key_id: key.signing_key.verify_key},
         remote.server_name: {remote.key.key_id: remote.key.signing_key.verify_key}},
    )
    assert key.key_id in signed["signatures"][ours_name]
    assert await ours.services.rooms.rooms_for_user(bob) == {room.room_id: "invite"}
    invite_state = await ours.services.rooms.get_invite_state(bob, room.room_id)
    assert [e["type"] for e in invite_state] == ["m.room.create", "m.room.member"]


async def test_returned_state_is_verified(setup: tuple[RunningServer, FakeRemote]) -> None:
    ours, remote = setup
    room = remote.room("11")
    room.create_room()
    name = room.build("m.room.name", room.creator, {"name": "fine"}, "")
    # A power levels change by a user who never joined: signed, but fails the auth rules.
    intruder = f"@intruder:{remote.server_name}"
    forged = room.build("m.room.power_levels", intruder, {"users": {intruder: 100}}, "", add=False)
    # An event whose signature does not verify.
    topic = room.build("m.room.topic", room.creator, {"topic": "t"}, "", add=False)
    bad_sig = dict(topic.pdu, signatures={remote.server_name: {remote.key.key_id: "AAAA"}})
    pdus = [*(e.pdu for e in room.events), forged.pdu, bad_sig]
    good = await ours.services.rooms.remote.verify_events(room.room_id, room.version, pdus)
    assert set(good) == {e.event_id for e in room.events}
    assert name.event_id in good and forged.event_id not in good and topic.event_id not in good
    # An event whose auth event is left out is left out too.
    after_forged = room.build("m.room.topic", room.creator, {"topic": "x"}, "", add=False,
                              auth_from={**room.state, ("m.room.power_levels", ""): forged})
    good = await ours.services.rooms.remote.verify_events(
        room.room_id, room.version, [*pdus, after_forged.pdu])
    assert after_forged.event_id not in good


async def test_profile_query_without_profiles(setup: tuple[RunningServer, FakeRemote]) -> None:
    ours, remote = setup
    user = quote(f"@bob:{ours.services.config.server_name}", safe="")
    status, reply = await remote.get(ours, f"/_matrix/federation/v1/query/profile?user_id={user}")
    assert (status, reply["errcode"]) == (404, "M_NOT_FOUND")
    other = quote("@bob:elsewhere.example", safe="")
    status, reply = await remote.get(ours, f"/_matrix/federation/v1/query/profile?user_id={other}")
    assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM")
    status, reply = await remote.get(ours, "/_matrix/federation/v1/query/profile")
    assert (status, reply["errcode"]) == (400, "M_MISSING_PARAM")


async def test_out_of_band_kick_must_come_from_the_room(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """A kick that would end a pending invite of a room we hold no state of is taken only
    from the inviter, citing the invite among its auth events: not from another server, not
    from another member, not without the citation."""
    cfg = make_config(tmp_path / "ours", await db_factory.new_settings(), test_ca)
    async with running_server(cfg) as ours, fake_remote(test_ca, tmp_path / "remote") as remote, \
            fake_remote(test_ca, tmp_path / "third", host="127.0.0.1") as third:
        bob = f"@bob:{ours.services.config.server_name}"
        room = remote.room("11")
        room.create_room()
        invite = room.build("m.room.member", room.creator, {"membership": "invite"}, bob)
        status, _ = await remote.get(ours, invite_path(room.room_id, invite.event_id), "PUT", {
            "room_version": "11", "event": invite.pdu, "invite_room_state": [room.events[0].pdu]})
        assert status == 200
        assert await ours.services.rooms.rooms_for_user(bob) == {room.room_id: "invite"}

        other = f"@other:{remote.server_name}"
        uncited = {k: v for k, v in room.state.items() if k != ("m.room.member", bob)}
        attempts = [
            (third, room.build("m.room.member", f"@mallory:{third.server_name}", {"membership": "leave"}, bob,
                               add=False, signer=third)),
            (remote, room.build("m.room.member", other, {"membership": "leave"}, bob, add=False)),
            (remote, room.build("m.room.member", room.creator, {"membership": "ban"}, bob, add=False,
                                auth_from=uncited)),
        ]
        for sender, kick in attempts:
            assert invite.event_id in kick.auth_events or kick.sender == room.creator
            status, body = await sender.send(ours, [kick])
            assert status == 200 and body["pdus"] == {kick.event_id: {}}
            assert await ours.services.inbound_worker.wait_idle(10)
            assert await ours.services.rooms.rooms_for_user(bob) == {room.room_id: "invite"}, kick.sender

        rescinded = room.build("m.room.member", room.creator, {"membership": "leave"}, bob)
        assert invite.event_id in rescinded.auth_events
        assert (await remote.send(ours, [rescinded]))[0] == 200
        assert await ours.services.inbound_worker.wait_idle(10)
        assert await ours.services.rooms.rooms_for_user(bob) == {room.room_id: "leave"}
