"""Typing and receipts over federation (both engines, a real server, fake remotes signing
real /send requests): only a server with a joined member in the room speaks for it, and
what it says is bounded (a receipt's data is reduced to ``ts`` and ``thread_id``; a
server's typing users per room are capped)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homeserver.federation.pipeline.edus import MAX_TYPING_PER_SERVER
from homeserver.server import RunningServer
from tests.conftest import DatabaseFactory
from tests.remote import FakeRemote, RemoteRoom, fake_remote
from tests.servers import make_config, running_server

WAIT = 30.0


@dataclass
class Setup:
    server: RunningServer
    member: FakeRemote  # its creator is joined to the room
    stranger: FakeRemote  # no member in the room
    room: RemoteRoom


@pytest.fixture
async def setup(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[Setup]:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "member") as member, \
            fake_remote(test_ca, tmp_path / "stranger") as stranger:
        room = member.room()
        room.create_room()
        await room.teach(server)
        yield Setup(server, member, stranger, room)


def metric(server: RunningServer, name: str, labels: dict[str, str]) -> float:
    return server.services.metrics.registry.get_sample_value(name, labels) or 0.0


async def rows(server: RunningServer, table: str) -> list[tuple[object, ...]]:
    columns = "user_id" if table == "typing" else "user_id, event_ids, data"
    return list(await server.services.db.fetchall(f"SELECT {columns} FROM {table} ORDER BY user_id"))


async def test_a_server_not_in_the_room_cannot_speak_for_it(setup: Setup) -> None:
    s = setup
    them = f"@eve:{s.stranger.server_name}"
    last = s.room.events[-1].event_id
    edus = [
        {"edu_type": "m.typing", "content": {"room_id": s.room.room_id, "user_id": them, "typing": True}},
        {"edu_type": "m.receipt", "content": {s.room.room_id: {"m.read": {
            them: {"event_ids": [last], "data": {"ts": 1}}}}}},
    ]
    status, _ = await s.stranger.send(s.server, [], edus)
    assert status == 200
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await rows(s.server, "typing") == []
    assert await rows(s.server, "receipts") == []
    assert metric(s.server, "hs_inbound_edus_dropped_total",
                  {"origin": s.stranger.server_name, "reason": "not_in_room"}) == 2
    # The member server's own EDUs still land.
    me = s.room.creator
    status, _ = await s.member.send(s.server, [], [
        {"edu_type": "m.typing", "content": {"room_id": s.room.room_id, "user_id": me, "typing": True}},
        {"edu_type": "m.receipt", "content": {s.room.room_id: {"m.read": {
            me: {"event_ids": [last], "data": {"ts": 7}}}}}},
    ])
    assert status == 200
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await rows(s.server, "typing") == [(me,)]
    assert await rows(s.server, "receipts") == [(me, json.dumps([last]), json.dumps({"ts": 7}))]


async def test_receipt_data_and_typing_lists_are_bounded(setup: Setup) -> None:
    s = setup
    last = s.room.events[-1].event_id
    me = s.room.creator
    other = f"@other:{s.member.server_name}"
    third = f"@third:{s.member.server_name}"
    receipts = {
        # Data beyond ts and thread_id is not kept (here 100 KB of it).
        me: {"event_ids": [last], "data": {"ts": 5, "thread_id": "main", "junk": "x" * 100_000}},
        # Too many event IDs, or none: dropped.
        other: {"event_ids": [last] * 11, "data": {"ts": 5}},
        third: {"event_ids": [], "data": {"ts": 5}},
    }
    status, _ = await s.member.send(s.server, [], [
        {"edu_type": "m.receipt", "content": {s.room.room_id: {"m.read": receipts}}},
    ])
    assert status == 200
    assert await s.server.services.inbound_worker.wait_idle(WAIT)
    assert await rows(s.server, "receipts") == [
        (me, json.dumps([last]), json.dumps({"ts": 5, "thread_id": "main"})),
    ]
    # What waits in the inbox is bounded too: the door keeps only the fields used.
    worker = s.server.services.inbound_worker
    worker.pause()
    try:
        await s.member.send(s.server, [], [
            {"edu_type": "m.receipt", "content": {s.room.room_id: {"m.read": {
                me: {"event_ids": [last], "data": {"ts": 6, "junk": "y" * 100_000}}}}}},
        ])
        held = await s.server.services.db.fetchall("SELECT body FROM inbox WHERE kind = 'edu'")
        assert held and all(len(str(b[0])) < 1000 for b in held), [len(str(b[0])) for b in held]
    finally:
        worker.resume()
    assert await worker.wait_idle(WAIT)

    # Typing: at most MAX_TYPING_PER_SERVER of one server's users at once in a room.
    typists = [f"@t{i}:{s.member.server_name}" for i in range(MAX_TYPING_PER_SERVER + 10)]
    edus = [{"edu_type": "m.typing", "content": {"room_id": s.room.room_id, "user_id": u, "typing": True}}
            for u in typists]
    status, _ = await s.member.send(s.server, [], edus)
    assert status == 200
    assert await worker.wait_idle(WAIT)
    assert len(await rows(s.server, "typing")) == MAX_TYPING_PER_SERVER
    assert metric(s.server, "hs_inbound_edus_dropped_total",
                  {"origin": s.member.server_name, "reason": "too_many_typing"}) == 10
