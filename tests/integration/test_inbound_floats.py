"""Floats in PDUs over /send, on SQLite and PostgreSQL: a fake remote hashes and signs
its events as Synapse does (its canonical JSON keeps ``1.0`` and ``1000.0``), and its
``/send`` body writes them so (and ``1e3``). In a room of version 5 the events are
accepted with their floats and their IDs as the sender computed them, stored and served
back byte for byte; in a room of version 10 (canonical JSON enforced) they are dropped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from homeserver.events.hashes import content_hash_matches
from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.remote import FakeRemote, RemoteRoom, fake_remote
from tests.servers import make_config, running_server

WAIT = 30.0
MESSAGE = {"msgtype": "m.text", "body": "floats", "org.example.one": 1.0, "org.example.thousand": 1e3,
           "org.example.half": 0.5, "org.example.list": [2.0, -0.0]}
LEVELS = {"users": {}, "users_default": 0, "ban": 50.0, "kick": 1e2, "events": {"m.room.name": 50.0}}


@dataclass
class Setup:
    server: RunningServer
    remote: FakeRemote
    rooms: dict[str, RemoteRoom]


@pytest.fixture
async def setup(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[Setup]:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "remote") as remote:
        rooms = {}
        for version in ("5", "10"):
            room = rooms[version] = remote.room(version)
            room.create_room()
            await room.teach(server)
        yield Setup(server, remote, rooms)


def _floats_kept(content: dict[str, Any]) -> None:
    for key in ("org.example.one", "org.example.thousand"):
        assert isinstance(content[key], float), key
    assert content["org.example.one"] == 1.0 and content["org.example.thousand"] == 1000.0
    assert [type(v) for v in content["org.example.list"]] == [float, float]


async def test_room_5_events_with_integral_floats_are_accepted_as_sent(setup: Setup) -> None:
    s, room = setup, setup.rooms["5"]
    message = room.build("m.room.message", room.creator, dict(MESSAGE))
    levels = room.build("m.room.power_levels", room.creator,
                        dict(LEVELS, users={room.creator: 100.0}), "")
    body = s.remote.transaction([message.pdu, levels.pdu])
    # As a Python sender writes the body (1.0, 1000.0), with one float written 1e3 instead.
    raw = json.dumps(body).replace("1000.0", "1e3", 1).encode()
    assert b"1e3" in raw and b"1.0" in raw
    status, reply = await s.remote.send_raw(s.server, "floats5", body, raw=raw, sign_content=body)
    assert status == 200
    # The IDs are the sender's: the reference hash covered the floats as floats.
    assert reply == {"pdus": {message.event_id: {}, levels.event_id: {}}}
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    store = s.server.services.event_store
    for event in (message, levels):
        stored = await store.get_event(event.event_id)
        assert stored is not None and stored.outcome is Outcome.ACCEPTED
        assert not stored.event.redacted_on_receipt  # the content hash matched
        assert stored.event.pdu == event.pdu
    stored_message = await store.get_event(message.event_id)
    assert stored_message is not None
    _floats_kept(stored_message.event.content)
    # Served back as received: the hash still matches for whoever fetches it.
    status, served = await s.remote.get(s.server, f"/_matrix/federation/v1/event/{message.event_id}")
    assert status == 200
    pdu = served["pdus"][0]
    _floats_kept(pdu["content"])
    assert content_hash_matches(pdu)
    # The float power levels are in force (rooms 1-5 read them, truncated).
    assert (await store.get_current_state_ids(room.room_id))[("m.room.power_levels", "")] == levels.event_id


async def test_room_10_events_with_floats_are_dropped(setup: Setup) -> None:
    s, room = setup, setup.rooms["10"]
    message = room.build("m.room.message", room.creator, dict(MESSAGE), add=False)
    plain = room.message("no floats")
    status, reply = await s.remote.send(s.server, [message, plain])
    assert status == 200 and set(reply["pdus"]) == {message.event_id, plain.event_id}
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    store = s.server.services.event_store
    assert await store.get_event(message.event_id) is None  # not canonical JSON: dropped
    stored = await store.get_event(plain.event_id)
    assert stored is not None and stored.outcome is Outcome.ACCEPTED


async def test_a_sender_signing_integers_may_write_them_with_an_exponent(setup: Setup) -> None:
    # The spec's canonical JSON makes 1e3 the integer 1000: a sender that signed (and
    # hashed) 1000 but wrote 1e3 in the body is read as it meant, as before.
    s, room = setup, setup.rooms["10"]
    message = room.build("m.room.message", room.creator, {"msgtype": "m.text", "body": "e", "n": 1000})
    body = s.remote.transaction([message.pdu])
    raw = json.dumps(body).replace('"n": 1000', '"n": 1e3', 1).encode()
    assert b'"n": 1e3' in raw
    status, reply = await s.remote.send_raw(s.server, "exponent", body, raw=raw, sign_content=body)
    assert status == 200 and reply == {"pdus": {message.event_id: {}}}
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    stored = await s.server.services.event_store.get_event(message.event_id)
    assert stored is not None and stored.outcome is Outcome.ACCEPTED
    assert stored.event.content["n"] == 1000 and isinstance(stored.event.content["n"], int)
