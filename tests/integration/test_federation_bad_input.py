"""Bad input from another server (both engines). A NUL character in a state key, an event
type, a membership or a prev_events entry makes the PDU malformed: it is dropped like any
malformed PDU, and the events sent with it still land. A body holding an unpaired
surrogate or ``1e400`` is refused with 400 M_BAD_JSON."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.remote import fake_remote
from tests.servers import make_config, running_server

WAIT = 30.0


async def test_pdus_with_nul_characters_are_dropped(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "remote") as remote:
        room = remote.room()
        room.create_room()
        await room.teach(server)
        last = room.events[-1].event_id
        bad = [
            room.build("m.room.topic", room.creator, {"topic": "x"}, "a\x00b", add=False, prev=[last]),
            room.build("m.x\x00y", room.creator, {"a": 1}, "", add=False, prev=[last]),
            room.build("m.room.member", room.creator, {"membership": "jo\x00in"}, room.creator, add=False,
                       prev=[last]),
            room.build("m.room.message", room.creator, {"body": "x"}, add=False, prev=[last, "$a\x00b"]),
        ]
        good = room.message("fine")
        status, _ = await remote.send(server, [*bad, good])
        assert status == 200
        assert await server.services.inbound_worker.wait_idle(WAIT)
        store = server.services.event_store
        for event in bad:
            assert await store.get_event(event.event_id) is None
        stored = await store.get_event(good.event_id)
        assert stored is not None and stored.outcome is Outcome.ACCEPTED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_bodies_no_canonical_json_can_hold_are_400(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A body with an unpaired surrogate or a number beyond a double: no canonical JSON of
    it exists (so no signature can cover it), and the request gets 400 M_BAD_JSON, not a
    500."""
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "remote") as remote:
        for i, raw in enumerate((
            b'{"origin":"x","origin_server_ts":1,"pdus":[{"a":"\\ud800"}]}',
            b'{"origin":"x","origin_server_ts":1,"pdus":[{"a":1e400}]}',
            b'{"origin":"x","origin_server_ts":1,"pdus":[],"edus":[{"edu_type":"m.x","content":{"\\udc00":1}}]}',
        )):
            status, body = await remote.send_raw(server, f"bad{i}", None, raw=raw, sign_content={})
            assert (status, body["errcode"]) == (400, "M_BAD_JSON"), (raw, body)
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert int(await server.services.db.fetchval("SELECT COUNT(*) FROM inbox")) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
