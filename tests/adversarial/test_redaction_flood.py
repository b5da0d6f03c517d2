"""A flood of redactions that do not apply cannot make an event unredactable, on SQLite
and PostgreSQL: another server sends 30 redactions of a message by a user with no power
(from the wrong server) in the room, and 30 in another room by that room's admin; the
message's sender's own redaction, and one by the room's admin over federation, still
redact their targets, for clients and for other servers. The refused redactions are
judged once and leave no row behind (so serving the event again costs one look-up)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from homeserver.events.event import Event
from homeserver.server import RunningServer
from homeserver.storage.events import Outcome
from tests.clients import client_server, msg, nio_user, raw
from tests.conftest import DatabaseFactory
from tests.integration.test_inbound_send import WAIT, outcome
from tests.remote import RemoteRoom, fake_remote

V3 = "/_matrix/client/v3"
JUNK = 30


def _redaction(room: RemoteRoom, sender: str, target: str, **kw: Any) -> Event:
    if room.version.redacts_in_content:
        return room.build("m.room.redaction", sender, {"redacts": target}, **kw)
    return room.build("m.room.redaction", sender, {}, extra={"redacts": target}, **kw)


async def _rows(server: RunningServer, target: str) -> int:
    value = await server.services.db.fetchval("SELECT COUNT(*) FROM redactions WHERE redacts = ?", target)
    return int(value)


async def test_junk_redactions_do_not_stop_the_real_ones(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "hs", test_ca) as server, \
            fake_remote(test_ca, tmp_path / "home") as home, fake_remote(test_ca, tmp_path / "evil") as evil, \
            nio_user(server, "alice") as alice:
        home.accept_sends = evil.accept_sends = True
        ours = SimpleNamespace(server_name=server.services.config.server_name, key=server.services.signing_key)
        # A room of the home server, with Alice (ours) and Mallory (evil's, power 0) joined.
        room = home.room("11")
        room.create_room()
        mallory = f"@mallory:{evil.server_name}"
        room.build("m.room.member", alice.user_id, {"membership": "join"}, alice.user_id, signer=ours)
        room.build("m.room.member", mallory, {"membership": "join"}, mallory, signer=evil)
        await room.teach(server)
        # Another room, evil's own, where its creator has all the power.
        elsewhere = evil.room("11")
        elsewhere.create_room()
        await elsewhere.teach(server)

        targets: list[str] = []
        for body in ("mine to redact", "the admin's to redact"):
            status, sent = await raw(server, "PUT", f"{V3}/rooms/{room.room_id}/send/m.room.message/{len(targets)}",
                                     token=alice.access_token, json=msg(body))
            assert status == 200, sent
            targets.append(sent["event_id"])

        # 1. The junk: in the room by Mallory (no power, not Alice's server), sent over
        # federation after the messages; and in evil's room by its admin.
        prev = [targets[-1]]
        junk: list[Event] = []
        for _ in range(JUNK):
            for target in targets:
                junk.append(_redaction(room, mallory, target, signer=evil, prev=prev))
                prev = [junk[-1].event_id]
        for start in range(0, len(junk), 50):
            status, body = await evil.send(server, junk[start:start + 50])
            assert status == 200, body
        assert await server.services.inbound_worker.wait_idle(WAIT)
        for e in junk:
            assert await outcome(server, e.event_id) is Outcome.ACCEPTED
        elsewhere_junk = [_redaction(elsewhere, elsewhere.creator, t) for _ in range(JUNK) for t in targets]
        await elsewhere.teach(server, elsewhere_junk)

        # Nothing is redacted yet (the second message is served once now: its junk is
        # judged before its redaction comes; the first one's only after).
        for target in targets[1:]:
            status, event = await raw(server, "GET", f"{V3}/rooms/{room.room_id}/event/{target}",
                                      token=alice.access_token)
            assert status == 200 and event["content"].get("body"), event

        # 2. Alice redacts her first message; the room's admin (home's creator) the second,
        # over federation.
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room.room_id}/redact/{targets[0]}/r1",
                                 token=alice.access_token, json={"reason": "mine"})
        assert status == 200, body
        own = body["event_id"]
        extremities = await server.services.event_store.get_forward_extremities(room.room_id)
        admins = _redaction(room, room.creator, targets[1], prev=sorted(extremities))
        status, body = await home.send(server, [admins])
        assert status == 200, body
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert await outcome(server, admins.event_id) is Outcome.ACCEPTED

        because = {targets[0]: own, targets[1]: admins.event_id}
        for _ in range(2):  # served twice: the second time from what the first left
            for target, redaction_id in because.items():
                status, event = await raw(server, "GET", f"{V3}/rooms/{room.room_id}/event/{target}",
                                          token=alice.access_token)
                assert status == 200, event
                assert event["content"] == {}, event
                assert event["unsigned"]["redacted_because"]["event_id"] == redaction_id
                status, body = await home.get(server, f"/_matrix/federation/v1/event/{target}")
                assert status == 200, body
                assert body["pdus"][0]["content"] == {}, body
            for target in targets:
                assert await _rows(server, target) == 1

        # /messages: the messages redacted, the refused redactions left out, the real ones shown.
        status, page = await raw(server, "GET", f"{V3}/rooms/{room.room_id}/messages?dir=b&limit=200",
                                 token=alice.access_token)
        assert status == 200, page
        by_id = {e["event_id"]: e for e in page["chunk"]}
        assert all(by_id[t]["content"] == {} for t in targets)
        assert {e["event_id"] for e in page["chunk"] if e["type"] == "m.room.redaction"} == set(because.values())
