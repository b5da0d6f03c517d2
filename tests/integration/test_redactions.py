"""Redactions applied to what is served, on SQLite and PostgreSQL: a redacted event comes
out redacted (with ``unsigned.redacted_because``) from /event, /messages, /sync and the
state endpoints, and to other servers from the federation read endpoints; a redaction by
someone on another server without the power to redact changes nothing; redactions stored
before the redactions table existed are found by its migration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nio import JoinResponse, RoomCreateResponse, RoomPreset, RoomSendResponse

from homeserver.rooms.redactions import hide_unapplied
from homeserver.storage.database import Database
from homeserver.storage.migrations import MIGRATIONS_DIR, migrate
from tests.clients import client_server, msg, nio_user, raw
from tests.conftest import DatabaseFactory
from tests.integration.test_inbound_send import WAIT, outcome
from tests.remote import FakeRemote, RemoteRoom, fake_remote
from tests.servers import make_config, running_server

V3 = "/_matrix/client/v3"
TEXT = "m.room.message"


async def _redact(server: Any, token: str, room: str, event_id: str, txn: str, reason: str | None = None) -> str:
    status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/redact/{event_id}/{txn}", token=token,
                             json={} if reason is None else {"reason": reason})
    assert status == 200, body
    return str(body["event_id"])


async def test_redacted_events_are_served_redacted_to_clients(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as alice, nio_user(server, "bob") as bob:
        created = await alice.room_create(name="Redact", topic="secret plans", preset=RoomPreset.public_chat)
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        assert isinstance(await bob.join(room), JoinResponse)
        ids: dict[str, str] = {}
        for who, body in ((alice, "regret"), (bob, "bob regrets"), (bob, "bob's rude"), (alice, "keep me")):
            sent = await who.room_send(room, TEXT, msg(body))
            assert isinstance(sent, RoomSendResponse), sent
            ids[body] = sent.event_id
        # Her own, his own, and a moderator's (Alice created the room: power 100).
        because = {
            ids["regret"]: await _redact(server, alice.access_token, room, ids["regret"], "r1", "typo"),
            ids["bob regrets"]: await _redact(server, bob.access_token, room, ids["bob regrets"], "r2"),
            ids["bob's rude"]: await _redact(server, alice.access_token, room, ids["bob's rude"], "r3", "rude"),
        }

        # A redaction sent as a plain event gets the same checks as /redact: Bob has no power
        # over Alice's message, and a redaction must name its target.
        keep = ids["keep me"]
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/send/m.room.redaction/s1",
                                 token=bob.access_token, json={"redacts": keep})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/send/m.room.redaction/s2",
                                 token=bob.access_token, json={"reason": "no target"})
        assert (status, body["errcode"]) == (400, "M_BAD_JSON"), body
        # Nor as a state event: it is stored, but redacts nothing.
        status, body = await raw(server, "PUT", f"{V3}/rooms/{room}/state/m.room.redaction",
                                 token=alice.access_token, json={"redacts": keep})
        assert status == 200, body

        for event_id, redaction_id in because.items():
            status, event = await raw(server, "GET", f"{V3}/rooms/{room}/event/{event_id}", token=bob.access_token)
            assert status == 200, event
            assert event["type"] == TEXT and event["content"] == {} and event["sender"]
            assert event["unsigned"]["redacted_because"]["event_id"] == redaction_id
            assert event["unsigned"]["redacted_because"]["content"]["redacts"] == event_id
        status, event = await raw(server, "GET", f"{V3}/rooms/{room}/event/{ids['keep me']}", token=bob.access_token)
        assert status == 200 and event["content"]["body"] == "keep me" and "redacted_because" not in event["unsigned"]
        # The redaction itself is served whole, reason and all.
        status, event = await raw(server, "GET", f"{V3}/rooms/{room}/event/{because[ids['regret']]}",
                                  token=bob.access_token)
        assert status == 200 and event["content"] == {"redacts": ids["regret"], "reason": "typo"}

        status, page = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=50", token=bob.access_token)
        assert status == 200, page
        messages = {e["event_id"]: e for e in page["chunk"] if e["type"] == TEXT}
        assert {i: e["content"].get("body") for i, e in messages.items()} == {
            ids["regret"]: None, ids["bob regrets"]: None, ids["bob's rude"]: None, ids["keep me"]: "keep me"}
        assert messages[ids["bob's rude"]]["unsigned"]["redacted_because"]["event_id"] == because[ids["bob's rude"]]

        status, synced = await raw(server, "GET", f"{V3}/sync?timeout=0", token=bob.access_token)
        assert status == 200, synced
        timeline = {e["event_id"]: e for e in synced["rooms"]["join"][room]["timeline"]["events"]}
        assert timeline[ids["regret"]]["content"] == {}
        assert timeline[ids["keep me"]]["content"]["body"] == "keep me"

        # A state event: the topic, redacted by its sender, is served without its topic.
        status, topic = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.topic", token=bob.access_token)
        assert status == 200 and topic["topic"] == "secret plans"
        status, state = await raw(server, "GET", f"{V3}/rooms/{room}/state", token=bob.access_token)
        topic_id = next(e["event_id"] for e in state if e["type"] == "m.room.topic")
        redaction_id = await _redact(server, alice.access_token, room, topic_id, "r4")
        status, topic = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.topic", token=bob.access_token)
        assert status == 200 and topic == {}
        status, topic = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.topic?format=event",
                                  token=bob.access_token)
        assert status == 200 and topic["content"] == {}
        assert topic["unsigned"]["redacted_because"]["event_id"] == redaction_id
        status, state = await raw(server, "GET", f"{V3}/rooms/{room}/state", token=bob.access_token)
        assert next(e for e in state if e["type"] == "m.room.topic")["content"] == {}
        # The room directory and the stripped state given with an invite show it redacted too.
        status, _ = await raw(server, "PUT", f"{V3}/directory/list/room/{room}", token=alice.access_token,
                              json={"visibility": "public"})
        assert status == 200
        status, listed = await raw(server, "GET", f"{V3}/publicRooms")
        entry = next(r for r in listed["chunk"] if r["room_id"] == room)
        assert entry["name"] == "Redact" and "topic" not in entry, entry
        async with nio_user(server, "carol") as carol:
            status, _ = await raw(server, "POST", f"{V3}/rooms/{room}/invite", token=alice.access_token,
                                  json={"user_id": carol.user_id})
            assert status == 200
            status, synced = await raw(server, "GET", f"{V3}/sync?timeout=0", token=carol.access_token)
            stripped = {e["type"]: e for e in synced["rooms"]["invite"][room]["invite_state"]["events"]}
            assert stripped["m.room.name"]["content"] == {"name": "Redact"}
            assert stripped["m.room.topic"]["content"] == {}, stripped

        # Redaction keeps what the room needs: the power levels stay whole where it matters.
        status, name = await raw(server, "GET", f"{V3}/rooms/{room}/state/m.room.name", token=bob.access_token)
        assert status == 200 and name == {"name": "Redact"}


def _redaction(room: RemoteRoom, sender: str, target: str, signer: FakeRemote | None = None) -> Any:
    if room.version.redacts_in_content:
        return room.build("m.room.redaction", sender, {"redacts": target}, signer=signer)
    return room.build("m.room.redaction", sender, {}, signer=signer, extra={"redacts": target})


@pytest.mark.parametrize("version", ["1", "5", "9", "10", "11"])
async def test_redactions_from_other_servers_need_their_server_or_power(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], version: str
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "r") as remote, \
            fake_remote(test_ca, tmp_path / "third") as third:
        room = remote.room(version)
        room.create_room()
        await room.teach(server)
        carol = f"@carol:{third.server_name}"
        join = room.build("m.room.member", carol, {"membership": "join"}, carol, signer=third)
        creators = room.message("the creator's")
        carols = room.message("carol's", sender=carol, signer=third)
        carols_own = room.message("carol's own", sender=carol, signer=third)
        not_hers = _redaction(room, carol, creators.event_id, signer=third)  # no power, another server
        her_own = _redaction(room, carol, carols_own.event_id, signer=third)  # the sender's own server
        moderated = _redaction(room, room.creator, carols.event_id)  # the creator's power
        dangling = _redaction(room, room.creator, "$" + "A" * 43)  # its target is not held
        topic = room.build("m.room.topic", room.creator, {"topic": "secret plans"}, "")
        topic_redacted = _redaction(room, room.creator, topic.event_id)
        last = room.message("last")
        events = [join, creators, carols, carols_own, not_hers, her_own, moderated, dangling, topic,
                  topic_redacted, last]
        status, _ = await remote.send(server, events)
        assert status == 200
        assert await server.services.inbound_worker.wait_idle(WAIT)
        for e in events:
            assert await outcome(server, e.event_id) is not None

        async def served(event_id: str) -> dict[str, Any]:
            status, body = await remote.get(server, f"/_matrix/federation/v1/event/{event_id}")
            assert status == 200, body
            return dict(body["pdus"][0])

        assert (await served(creators.event_id))["content"]["body"] == "the creator's"
        assert (await served(carols_own.event_id))["content"] == {}
        assert (await served(carols.event_id))["content"] == {}
        # Redacted, the event keeps its signatures (its ID and hashes still tell what it was).
        assert (await served(carols.event_id))["signatures"] == carols.pdu["signatures"]
        status, body = await remote.get(
            server, f"/_matrix/federation/v1/backfill/{room.room_id}?v={moderated.event_id}&limit=10")
        assert status == 200, body
        bodies = {p["content"].get("body") for p in body["pdus"] if p["type"] == TEXT}
        assert bodies == {"the creator's", None}

        # The state at an event, too: the redacted topic comes without its topic.
        status, body = await remote.get(
            server, f"/_matrix/federation/v1/state/{room.room_id}?event_id={last.event_id}")
        assert status == 200, body
        by_type = {p["type"]: p for p in body["pdus"]}
        assert by_type["m.room.topic"]["content"] == {}
        assert by_type["m.room.join_rules"]["content"] == {"join_rule": "public"}

        # Clients are shown only the redactions that apply (they redact on receipt).
        store = server.services.event_store
        ids = [not_hers.event_id, her_own.event_id, moderated.event_id, dangling.event_id]
        stored = await store.get_events(ids)
        shown = await hide_unapplied(store, [stored[i] for i in ids])
        assert [se.event.event_id for se in shown] == [her_own.event_id, moderated.event_id]


async def _old_schema_with_redactions(db: Database, tmp_path: Path) -> None:
    """A database migrated up to 0008 holding three redaction events (v10: top-level
    ``redacts``; v11: in content; one whose ``redacts`` is not a string) and a message."""
    old = tmp_path / "old"
    old.mkdir()
    for entry in MIGRATIONS_DIR.iterdir():
        if entry.name.endswith(".sql") and int(entry.name[:4]) <= 8:
            (old / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    await migrate(db, old)
    for room, version in (("!ten:x", "10"), ("!eleven:x", "11")):
        await db.execute("INSERT INTO rooms (room_id, room_version, created_ts) VALUES (?, ?, 0)", room, version)
    rows = [
        ("$r10", "!ten:x", "m.room.redaction", {"redacts": "$target10", "content": {"redacts": "$wrong"}}),
        ("$r11", "!eleven:x", "m.room.redaction", {"content": {"redacts": "$target11"}}),
        ("$rbad", "!eleven:x", "m.room.redaction", {"content": {"redacts": 5}}),
        ("$msg", "!eleven:x", TEXT, {"content": {"redacts": "$not_a_redaction"}}),
    ]
    for n, (event_id, room, event_type, pdu) in enumerate(rows, start=1):
        await db.execute(
            "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth, origin_server_ts,"
            " outcome, received_ts, json) VALUES (?, ?, ?, ?, '@a:x', 1, 0, 'accepted', 0, ?)",
            n, event_id, room, event_type, json.dumps({"type": event_type, **pdu}),
        )


async def test_migration_finds_redactions_stored_before_it(db: Database, tmp_path: Path) -> None:
    await _old_schema_with_redactions(db, tmp_path)
    assert 9 in await migrate(db)
    rows = await db.fetchall("SELECT event_id, redacts FROM redactions ORDER BY event_id")
    assert [tuple(r) for r in rows] == [("$r10", "$target10"), ("$r11", "$target11")]
