"""Record real Synapse events as test vectors: ``tests/fixtures/synapse-vectors/synapse-room-vN.json``.

Starts two Synapse servers on loopback (the interop harness, ``tests/interop/synapse.py``,
with a fresh test CA), and for each room version asked for has a client on the first server:
create a room (name, topic, shared history, invite-only), invite two users of the second
server, who join over federation; send messages (non-ASCII text and an emoji), redact one,
change power levels, let a user of the second server set the topic, ban one of them, and
make the room public. Version 7 and later add a knock by a third user of the second server,
whom the creator then invites and kicks; versions 8 and 9 add a restricted join (an
``allow`` naming another room the joiner is in). The events are then read from the first
server's SQLite database (``events``/``event_json``/``rejections``) in stream order, and the
servers' signed key documents are fetched from ``/_matrix/key/v2/server``.

    .venv/bin/python tools/record_synapse_vectors.py 1 2 3 4 5 6 7 8 9

Needs the cached Synapse virtualenv of the interop suite (built on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sqlite3
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from homeserver.crypto.tls import generate_ca  # noqa: E402
from tests.interop.client import ClientError, MatrixClient  # noqa: E402
from tests.interop.synapse import SynapseServer, ensure_synapse_venv, installed_version  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "synapse-vectors"
NOTE = (
    "pdu is the event as Synapse stores it (federation format; for v3+ rooms no event_id key, "
    "for v1/v2 rooms the event_id is in the pdu). The redacted message appears redacted only if "
    "Synapse pruned it; for v3+ event_id must equal the reference hash of pdu per the room version."
)


def _room(room_id: str) -> str:
    return quote(room_id, safe="")


async def _put_state(client: MatrixClient, room_id: str, event_type: str, content: dict[str, Any],
                     state_key: str = "") -> str:
    path = f"/_matrix/client/v3/rooms/{_room(room_id)}/state/{event_type}/{quote(state_key, safe='')}"
    return str((await client.request("PUT", path, json=content))["event_id"])


async def _send(client: MatrixClient, room_id: str, content: dict[str, Any], txn: str) -> str:
    path = f"/_matrix/client/v3/rooms/{_room(room_id)}/send/m.room.message/{txn}"
    return str((await client.request("PUT", path, json=content))["event_id"])


async def _wait_joined(client: MatrixClient, room_id: str, user_id: str, tries: int = 100) -> None:
    """Until ``client``'s server sees ``user_id`` joined (federation is asynchronous)."""
    for _ in range(tries):
        try:
            member = await client.state_event(room_id, "m.room.member", user_id)
            if member.get("membership") == "join":
                return
        except ClientError:  # not there yet
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{user_id} never joined {room_id} as seen by {client.user_id}")


async def _accept_invite(client: MatrixClient, room_id: str, via: str) -> None:
    for _ in range(100):
        await client.sync(timeout_ms=500)
        if room_id in client.invites:
            break
    await client.join(room_id, [via])


async def record_room(version: str, alice: MatrixClient, bob: MatrixClient, carol: MatrixClient,
                      dave: MatrixClient, first: SynapseServer) -> str:
    body = {
        "room_version": version, "preset": "private_chat", "name": f"vectors v{version}",
        "topic": "test vectors",
        "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                           "content": {"history_visibility": "shared"}}],
    }
    room_id = str((await alice.request("POST", "/_matrix/client/v3/createRoom", json=body))["room_id"])
    path = f"/_matrix/client/v3/rooms/{_room(room_id)}/invite"
    for user in (bob, carol):
        await alice.request("POST", path, json={"user_id": user.user_id})
    for user in (bob, carol):
        await _accept_invite(user, room_id, first.server_name)
        await _wait_joined(alice, room_id, user.user_id)
    await _send(alice, room_id, {"msgtype": "m.text", "body": f"hello v{version} éè 😀"}, "t1")
    doomed = await _send(alice, room_id, {"msgtype": "m.text", "body": "to be redacted"}, "t2")
    await alice.request("PUT", f"/_matrix/client/v3/rooms/{_room(room_id)}/redact/{quote(doomed, safe='')}/r1",
                        json={"reason": "vectors"})
    await _send(bob, room_id, {"msgtype": "m.text", "body": "from bob", "n": 42}, "t3")
    power = await alice.state_event(room_id, "m.room.power_levels")
    power["users"][bob.user_id] = 50
    power["events"]["m.room.topic"] = 50
    power["invite"] = 100  # so that only the first server can authorise a restricted join
    await _put_state(alice, room_id, "m.room.power_levels", power)
    await asyncio.sleep(1.0)  # let the power levels reach the second server
    for _ in range(50):
        try:
            await _put_state(bob, room_id, "m.room.topic", {"topic": "set by bob ✓"})
            break
        except ClientError:  # bob's server has not seen the power levels yet
            await asyncio.sleep(0.2)
    else:
        raise RuntimeError("bob could not set the topic")
    await alice.ban(room_id, carol.user_id, "vectors ban")
    if int(version) >= 7:
        await _put_state(alice, room_id, "m.room.join_rules", {"join_rule": "knock"})
        await asyncio.sleep(1.0)
        await dave.request("POST", f"/_matrix/client/v3/knock/{_room(room_id)}?server_name={quote(first.server_name)}",
                           json={"reason": "let me in"}, timeout=60)
        await asyncio.sleep(1.0)
        # The creator lets the knock in with an invite, then takes it back (a kick): both are
        # events of the first server (the second cannot join from this invite: Synapse
        # 1.163.2 builds that join with two member auth events, and the first refuses it).
        await alice.request("POST", path, json={"user_id": dave.user_id})
        await alice.request("POST", f"/_matrix/client/v3/rooms/{_room(room_id)}/kick",
                            json={"user_id": dave.user_id, "reason": "changed my mind"})
    if version in ("8", "9"):
        other = str((await alice.request("POST", "/_matrix/client/v3/createRoom",
                                         json={"room_version": version, "preset": "public_chat"}))["room_id"])
        await dave.join(other, [first.server_name])
        await _put_state(alice, room_id, "m.room.join_rules", {
            "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": other}]})
        await asyncio.sleep(1.0)
        await dave.join(room_id, [first.server_name])
        await _wait_joined(alice, room_id, dave.user_id)
    await _put_state(alice, room_id, "m.room.join_rules", {"join_rule": "public"})
    await asyncio.sleep(1.0)
    return room_id


def read_events(db: Path, room_id: str) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT e.event_id, j.json, r.reason FROM events e JOIN event_json j USING (event_id)"
            " LEFT JOIN rejections r USING (event_id) WHERE e.room_id = ? ORDER BY e.stream_ordering",
            (room_id,),
        ).fetchall()
    finally:
        con.close()
    return [{"event_id": eid, "pdu": json.loads(pdu), "rejected": reason} for eid, pdu, reason in rows]


async def server_keys(http: aiohttp.ClientSession, servers: list[SynapseServer], ca: Path) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    keys = {}
    for s in servers:
        async with http.get(f"https://localhost:{s.fed_port}/_matrix/key/v2/server", ssl=ctx) as r:
            keys[s.server_name] = await r.json()
    return keys


async def main(versions: list[str], out: Path) -> None:
    python = ensure_synapse_venv()
    synapse_version = installed_version(python)
    with tempfile.TemporaryDirectory(prefix="record-vectors-") as tmp:
        d = Path(tmp)
        ca = (d / "ca.crt", d / "ca.key")
        generate_ca(*ca)
        extra = {"rc_room_creation": {"per_second": 1000, "burst_count": 1000}}
        first = SynapseServer(python, d / "s1", ca, extra)
        second = SynapseServer(python, d / "s2", ca, extra)
        first.start()
        second.start()
        try:
            async with aiohttp.ClientSession() as http:
                stamp = datetime.datetime.now(datetime.UTC).strftime("%H%M%S")
                alice = MatrixClient(http, first.client_url)
                await alice.register(f"alice{stamp}")
                users = []
                for name in ("bob", "carol", "dave"):
                    c = MatrixClient(http, second.client_url)
                    await c.register(f"{name}{stamp}")
                    users.append(c)
                keys = await server_keys(http, [first, second], ca[0])
                for version in versions:
                    room_id = await record_room(version, alice, *users, first)
                    events = read_events(first.directory / "homeserver.db", room_id)
                    doc = {
                        "source": f"Synapse {synapse_version} on loopback, dumped from its database"
                                  " (events, event_json tables); recorded by tools/record_synapse_vectors.py",
                        "made": datetime.date.today().isoformat(),
                        "room_version": version,
                        "room_id": room_id,
                        "server_keys": keys,
                        "events": events,
                        "note": NOTE,
                    }
                    path = out / f"synapse-room-v{version}.json"
                    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
                    print(f"v{version}: {len(events)} events -> {path}")
        finally:
            first.stop()
            second.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    asyncio.run(main(args.versions, args.out))
