"""Server ACLs (``m.room.server_acl``), both engines, real servers on loopback: once the
room's ACL denies a server, its PDUs in /send get an error entry and are not enqueued, its
typing and receipts for the room are ignored, and the protected endpoints answer it 403
M_FORBIDDEN, while an allowed server goes on as before. And the matching rules."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from homeserver.rooms.acl import ServerAcl
from homeserver.storage.events import Outcome
from tests.conftest import DatabaseFactory
from tests.integration.test_inbound_send import WAIT, inbox_count, metric, outcome
from tests.remote import fake_remote
from tests.servers import make_config, running_server

FED = "/_matrix/federation/v1"


async def test_a_denied_server_is_refused(db_factory: DatabaseFactory, tmp_path: Path,
                                          test_ca: tuple[Path, Path]) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "r") as remote, \
            fake_remote(test_ca, tmp_path / "third", host="127.0.0.1") as third:
        room = remote.room()
        room.create_room()
        await room.teach(server)
        carol = f"@carol:{third.server_name}"
        join = room.build("m.room.member", carol, {"membership": "join"}, carol, signer=third)
        before = room.message("before the ACL", sender=carol, signer=third)
        assert (await third.send(server, [join, before]))[0] == 200
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert await outcome(server, before.event_id) is Outcome.ACCEPTED
        # The third server may read the room for now.
        state_ids = f"{FED}/state_ids/{quote(room.room_id, safe='')}?event_id={quote(before.event_id, safe='')}"
        assert (await third.get(server, state_ids))[0] == 200

        # The room's creator denies the third server's host, whatever its port.
        acl = room.build("m.room.server_acl", room.creator, {"allow": ["*"], "deny": ["127.0.0.*"]}, "")
        assert (await remote.send(server, [acl]))[0] == 200
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert await outcome(server, acl.event_id) is Outcome.ACCEPTED

        # /send: the PDU gets its error entry and is not enqueued; its EDUs are ignored.
        after = room.message("after the ACL", sender=carol, signer=third, add=False)
        edus = [
            {"edu_type": "m.typing", "content": {"room_id": room.room_id, "user_id": carol, "typing": True}},
            {"edu_type": "m.receipt", "content": {room.room_id: {"m.read": {
                carol: {"event_ids": [before.event_id], "data": {"ts": 1}}}}}},
        ]
        status, body = await third.send(server, [after], edus)
        assert status == 200
        assert body["pdus"] == {after.event_id: {"error": "The room's server ACL denies your server"}}
        assert await inbox_count(server) <= len(edus)  # only the EDUs, dropped by the worker
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert await outcome(server, after.event_id) is None
        db = server.services.db
        assert await db.fetchall("SELECT user_id FROM typing") == []
        assert await db.fetchall("SELECT user_id FROM receipts") == []
        assert metric(server, "hs_inbound_pdus_dropped_total", {"origin": third.server_name, "reason": "acl"}) == 1
        assert metric(server, "hs_inbound_edus_dropped_total", {"origin": third.server_name, "reason": "acl"}) == 2

        # The same with the room's head not cached (a cold room): the ACL is looked up.
        server.services.persister.heads.heads.clear()
        cold = room.message("cold", sender=carol, signer=third, add=False)
        status, body = await third.send(server, [cold])
        assert status == 200 and body["pdus"] == {cold.event_id: {"error": "The room's server ACL denies your server"}}

        # The protected endpoints: 403 M_FORBIDDEN.
        room_q = quote(room.room_id, safe="")
        for path in (
            state_ids,
            f"{FED}/state/{room_q}?event_id={quote(before.event_id, safe='')}",
            f"{FED}/backfill/{room_q}?v={quote(before.event_id, safe='')}&limit=5",
            f"{FED}/event_auth/{room_q}/{quote(before.event_id, safe='')}",
            f"{FED}/make_join/{room_q}/{quote(carol, safe='')}?ver=11",
            f"{FED}/make_leave/{room_q}/{quote(carol, safe='')}",
        ):
            status, body = await third.get(server, path)
            assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), (path, body)
        status, body = await third.get(server, f"{FED}/get_missing_events/{room_q}", "POST",
                                       {"earliest_events": [], "latest_events": [before.event_id]})
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body

        # The allowed server goes on as before.
        ok = room.message("still here")
        status, body = await remote.send(server, [ok], [
            {"edu_type": "m.typing", "content": {"room_id": room.room_id, "user_id": room.creator, "typing": True}}])
        assert status == 200 and body["pdus"] == {ok.event_id: {}}
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert await outcome(server, ok.event_id) is Outcome.ACCEPTED
        assert await db.fetchall("SELECT user_id FROM typing") == [(room.creator,)]
        status, _ = await remote.get(server, f"{FED}/state_ids/{room_q}?event_id={quote(ok.event_id, safe='')}")
        assert status == 200

        # Lifting the ACL lets the third server back in.
        lifted = room.build("m.room.server_acl", room.creator, {"allow": ["*"]}, "")
        assert (await remote.send(server, [lifted]))[0] == 200
        assert await server.services.inbound_worker.wait_idle(WAIT)
        back = room.message("back", sender=carol, signer=third)
        status, body = await third.send(server, [back])
        assert status == 200 and body["pdus"] == {back.event_id: {}}, json.dumps(body)


@pytest.mark.parametrize(("content", "server", "allowed"), [
    ({"allow": ["*"]}, "anything.example:8448", True),
    ({}, "anything.example", False),  # no allow list: nobody
    ({"allow": ["*"], "deny": ["evil.com"]}, "evil.com", False),
    ({"allow": ["*"], "deny": ["evil.com"]}, "evil.com:1234", False),  # the port is not considered
    ({"allow": ["*"], "deny": ["evil.com"]}, "EVIL.com", False),  # nor the case
    ({"allow": ["*"], "deny": ["evil.com"]}, "notevil.com", True),
    ({"allow": ["*"], "deny": ["*.evil.com"]}, "a.b.evil.com", False),
    ({"allow": ["*.good.org"]}, "good.org", False),
    ({"allow": ["?.good.org"]}, "a.good.org", True),
    ({"allow": ["?.good.org"]}, "ab.good.org", False),
    ({"allow": ["good.org", 5]}, "good.org", True),  # a non-string entry is skipped
    ({"allow": ["*"], "allow_ip_literals": False}, "1.2.3.4:8448", False),
    ({"allow": ["*"], "allow_ip_literals": False}, "[::1]:8448", False),
    ({"allow": ["*"], "allow_ip_literals": "no"}, "1.2.3.4", True),  # not a boolean: true
    ({"allow": ["*"]}, "[2001:db8::1]", True),
    ({"allow": ["*"], "deny": ["1.2.3.*"]}, "1.2.3.4:8448", False),
    ({"allow": ["a.b"]}, "aXb", False),  # "." is a dot, not any character
])
def test_acl_rules(content: dict[str, object], server: str, allowed: bool) -> None:
    assert ServerAcl.from_content(content).allows(server) is allowed
