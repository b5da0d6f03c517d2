"""Handshake announcements with three of our servers on loopback (real TLS, keys and
databases, both engines): a room lives on A, B is in it, and C's user joins, leaves (an
invite rejected) or knocks through A's make_*/send_* handshake. A, the resident server
that accepted the event, announces it to B: B's user sees it in /sync within 2 s, and
B's next message reaches C's user before C has sent anything. Each handshake is announced
once to each other server (counted on A and on B), never to C, and a retried send_join
announces nothing more. A restricted join that A authorises is announced with A's
countersignature. A stopped between accepting a join and sending it (its sender stopped,
or the process killed with SIGKILL while B is down) announces it after a restart: the
announcement was queued in the transaction that stored the join."""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from nio import AsyncClient

from homeserver.config import Config
from homeserver.server import RunningServer, start_server
from homeserver.storage.events import Outcome
from tests.clients import eventually, msg, nio_user, raw
from tests.clients import server_name as name
from tests.conftest import DatabaseFactory
from tests.procs import server_process, wait_ready
from tests.servers import make_config

V3 = "/_matrix/client/v3"
FAST = {"outbound": {"backoff_initial_seconds": 0.2, "backoff_ceiling_seconds": 1.0}}
ANNOUNCED_WITHIN = 2.0  # seconds: C's membership in B's /sync (the bound)


def metric(server: RunningServer, metric_name: str, **labels: str) -> float:
    return float(server.services.metrics.registry.get_sample_value(metric_name, labels) or 0.0)


def inbound_from(server: RunningServer, origin: RunningServer) -> float:
    return metric(server, "hs_inbound_pdus_total", origin=name(origin))


def sent_to(server: RunningServer, destination: RunningServer) -> float:
    return metric(server, "hs_outbound_pdus_total", destination=name(destination))


def announcements(server: RunningServer, membership: str) -> float:
    return metric(server, "hs_outbound_handshake_announcements_total", membership=membership)


async def quiet(*servers: RunningServer) -> bool:
    """Every inbox drained and every outbound queue empty."""
    for s in servers:
        if not s.services.inbound_worker.idle:
            return False
        if await s.services.db.fetchval("SELECT COUNT(*) FROM outbound_pdu_queue"):
            return False
    return True


class Trio:
    """Three of our servers; any of them can be stopped and started again on its database."""

    def __init__(self, configs: list[Config]) -> None:
        self.configs = configs
        self.servers: list[RunningServer] = []
        self.stopped: set[int] = set()

    async def stop(self, index: int) -> None:
        if index not in self.stopped:
            self.stopped.add(index)
            await self.servers[index].stop()

    async def start(self, index: int) -> RunningServer:
        assert index in self.stopped
        self.servers[index] = await start_server(self.configs[index])
        self.stopped.discard(index)
        return self.servers[index]

    async def restart(self, index: int) -> RunningServer:
        await self.stop(index)
        return await self.start(index)


@pytest.fixture
async def trio(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> AsyncIterator[Trio]:
    configs = [
        make_config(tmp_path / label, await db_factory.new_settings(), test_ca, extra=FAST)
        for label in ("a", "b", "c")
    ]
    t = Trio(configs)
    try:
        for config in configs:
            t.servers.append(await start_server(config))
        yield t
    finally:
        for index in range(len(t.servers)):
            await t.stop(index)


async def raw_sync(server: RunningServer, client: AsyncClient, since: str | None, timeout_ms: int) -> dict[str, Any]:
    path = f"{V3}/sync?timeout={timeout_ms}" + (f"&since={quote(since, safe='')}" if since else "")
    status, body = await raw(server, "GET", path, token=client.access_token)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def room_events(body: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    """The events of the room in a /sync answer: its state, then its timeline."""
    room = body.get("rooms", {}).get("join", {}).get(room_id)
    if room is None:
        return []
    return [*room.get("state", {}).get("events", []), *room.get("timeline", {}).get("events", [])]


class Watcher:
    """A user's /sync position: ``until`` long-polls from it for an event of a room."""

    def __init__(self, server: RunningServer, client: AsyncClient) -> None:
        self.server, self.client = server, client
        self.since: str | None = None

    async def start(self) -> None:
        self.since = str((await raw_sync(self.server, self.client, None, 0))["next_batch"])

    async def until(
        self, room_id: str, predicate: Callable[[dict[str, Any]], bool], within: float = 30.0
    ) -> tuple[dict[str, Any], float]:
        """The first event of ``room_id`` matching ``predicate`` and the seconds it took;
        AssertionError if none arrived ``within`` seconds."""
        start = time.monotonic()
        deadline = start + within
        while (left := deadline - time.monotonic()) > 0:
            body = await raw_sync(self.server, self.client, self.since, max(1, int(left * 1000)))
            self.since = str(body["next_batch"])
            for event in room_events(body, room_id):
                if predicate(event):
                    return event, time.monotonic() - start
        raise AssertionError(f"no matching event of {room_id} within {within} s")


def member(user_id: str, membership: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e.get("type") == "m.room.member" and e.get("state_key") == user_id
                      and e.get("content", {}).get("membership") == membership)


def text(body: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == "m.room.message" and e.get("content", {}).get("body") == body


async def client_join(server: RunningServer, client: AsyncClient, room_id: str, via: RunningServer) -> None:
    status, body = await raw(server, "POST", f"{V3}/join/{quote(room_id, safe='')}?server_name={name(via)}",
                             token=client.access_token, json={})
    assert status == 200, body


async def say(server: RunningServer, client: AsyncClient, room_id: str, body: str) -> str:
    status, resp = await raw(server, "PUT", f"{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/{body}",
                             token=client.access_token, json=msg(body))
    assert status == 200, resp
    return str(resp["event_id"])


async def has_accepted(server: RunningServer, event_id: str) -> bool:
    stored = await server.services.event_store.get_event(event_id)
    return stored is not None and stored.outcome is Outcome.ACCEPTED


async def test_join_through_a_is_announced_to_b_once(trio: Trio) -> None:
    a, b, c = trio.servers
    async with nio_user(b, "bob") as bob, nio_user(c, "carol") as carol:
        alice = f"@alice:{name(a)}"
        room = await a.services.rooms.create_room(alice, room_version="11", preset="public_chat")
        await client_join(b, bob, room, via=a)
        await eventually(lambda: quiet(a, b, c), attempts=600)
        watch_b, watch_c = Watcher(b, bob), Watcher(c, carol)
        await watch_b.start()
        counts = (inbound_from(b, a), inbound_from(b, c), inbound_from(c, a), sent_to(a, b), sent_to(a, c))
        # C's user joins through A; B's user sees the join within 2 s.
        await client_join(c, carol, room, via=a)
        await watch_c.start()
        join, took = await watch_b.until(room, member(carol.user_id, "join"), within=ANNOUNCED_WITHIN)
        assert took < ANNOUNCED_WITHIN
        # B's next message reaches C's user; C has sent nothing.
        hello = await say(b, bob, room, "hello carol")
        await watch_c.until(room, text("hello carol"))
        assert await has_accepted(c, hello)
        await eventually(lambda: quiet(a, b, c), attempts=600)
        # Once: B got the join from A alone, A sent C nothing, nobody received a duplicate.
        assert announcements(a, "join") == 1
        assert inbound_from(b, a) - counts[0] == 1  # the join, from A
        assert inbound_from(b, c) - counts[1] == 0  # C never sent it to B itself
        assert inbound_from(c, a) - counts[2] == 0  # never back to the joiner's server
        assert sent_to(a, b) - counts[3] == 1 and sent_to(a, c) - counts[4] == 0
        for s in (a, b, c):
            assert metric(s, "hs_inbound_duplicate_pdus_total") == 0
            assert metric(s, "hs_outbound_refused_relays_total") == 0
        # C retries send_join (v2, then v1) with the same event: answered, not announced again.
        stored = await c.services.event_store.get_event(join["event_id"])
        assert stored is not None
        path = f"/send_join/{quote(room, safe='')}/{quote(join['event_id'], safe='')}"
        v2 = await c.services.federation_client.put_json(name(a), "/_matrix/federation/v2" + path, stored.event.pdu)
        v1 = await c.services.federation_client.put_json(name(a), "/_matrix/federation/v1" + path, stored.event.pdu)
        assert isinstance(v1, list) and v1[0] == 200
        for body in (v2, v1[1]):
            assert body["event"]["sender"] == carol.user_id and body["event"]["content"]["membership"] == "join"
            assert any(p["type"] == "m.room.create" for p in body["state"]) and body["auth_chain"]
        await eventually(lambda: quiet(a, b, c), attempts=600)
        assert announcements(a, "join") == 1
        assert inbound_from(b, a) - counts[0] == 1
        assert metric(b, "hs_inbound_duplicate_pdus_total") == 0


async def test_rejected_invite_leave_is_announced(trio: Trio) -> None:
    a, b, c = trio.servers
    async with nio_user(b, "bob") as bob, nio_user(c, "carol") as carol:
        alice = f"@alice:{name(a)}"
        room = await a.services.rooms.create_room(alice, room_version="10", preset="public_chat")
        await client_join(b, bob, room, via=a)
        await a.services.rooms.invite(alice, room, carol.user_id)
        watch_b = Watcher(b, bob)
        await watch_b.start()
        await watch_b.until(room, member(carol.user_id, "invite"))
        await eventually(lambda: quiet(a, b, c), attempts=600)
        from_a = inbound_from(b, a)
        # Carol rejects the invite: C holds no state of the room, so the leave goes
        # through A's make_leave/send_leave; A announces it to B.
        status, body = await raw(c, "POST", f"{V3}/rooms/{quote(room, safe='')}/leave",
                                 token=carol.access_token, json={})
        assert status == 200, body
        _, took = await watch_b.until(room, member(carol.user_id, "leave"), within=ANNOUNCED_WITHIN)
        assert took < ANNOUNCED_WITHIN
        await eventually(lambda: quiet(a, b, c), attempts=600)
        assert announcements(a, "leave") == 1
        assert inbound_from(b, a) - from_a == 1
        assert metric(b, "hs_inbound_duplicate_pdus_total") == 0
        assert metric(a, "hs_outbound_refused_relays_total") == 0


async def test_knock_through_a_is_announced(trio: Trio) -> None:
    a, b, c = trio.servers
    async with nio_user(b, "bob") as bob, nio_user(c, "carol") as carol:
        alice = f"@alice:{name(a)}"
        room = await a.services.rooms.create_room(
            alice, room_version="10", preset="private_chat", invite=[bob.user_id],
            initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        )
        await client_join(b, bob, room, via=a)
        watch_b = Watcher(b, bob)
        await watch_b.start()
        await eventually(lambda: quiet(a, b, c), attempts=600)
        from_a = inbound_from(b, a)
        status, body = await raw(c, "POST", f"{V3}/knock/{quote(room, safe='')}?via={name(a)}",
                                 token=carol.access_token, json={"reason": "let me in"})
        assert status == 200, body
        knock, took = await watch_b.until(room, member(carol.user_id, "knock"), within=ANNOUNCED_WITHIN)
        assert took < ANNOUNCED_WITHIN and knock["content"].get("reason") == "let me in"
        await eventually(lambda: quiet(a, b, c), attempts=600)
        assert announcements(a, "knock") == 1
        assert inbound_from(b, a) - from_a == 1
        assert metric(b, "hs_inbound_duplicate_pdus_total") == 0
        assert await b.services.rooms.get_membership(carol.user_id, room) == ("knock", knock["event_id"])


async def test_restricted_join_authorised_by_a_is_announced(trio: Trio) -> None:
    a, b, c = trio.servers
    async with nio_user(b, "bob") as bob, nio_user(c, "carol") as carol:
        alice = f"@alice:{name(a)}"
        space = await a.services.rooms.create_room(alice, room_version="10", preset="public_chat")
        room = await a.services.rooms.create_room(
            alice, room_version="10", preset="public_chat",
            initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {
                "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}],
        )
        await client_join(b, bob, space, via=a)
        await client_join(b, bob, room, via=a)
        await client_join(c, carol, space, via=a)
        watch_b = Watcher(b, bob)
        await watch_b.start()
        await eventually(lambda: quiet(a, b, c), attempts=600)
        await client_join(c, carol, room, via=a)
        join, _ = await watch_b.until(room, member(carol.user_id, "join"), within=ANNOUNCED_WITHIN)
        assert join["content"]["join_authorised_via_users_server"] == alice
        stored = await b.services.event_store.get_event(join["event_id"])
        assert stored is not None and stored.outcome is Outcome.ACCEPTED
        assert set(stored.event.pdu["signatures"]) == {name(a), name(c)}  # A countersigned
        await eventually(lambda: quiet(a, b, c), attempts=600)
        assert announcements(a, "join") == 2  # carol into the space, then into the room
        assert metric(b, "hs_inbound_duplicate_pdus_total") == 0


async def test_join_accepted_before_a_stops_is_announced_after_restart(trio: Trio) -> None:
    a, b, c = trio.servers
    async with nio_user(b, "bob") as bob, nio_user(c, "carol") as carol:
        alice = f"@alice:{name(a)}"
        room = await a.services.rooms.create_room(alice, room_version="12", preset="public_chat")
        await client_join(b, bob, room, via=a)
        await eventually(lambda: quiet(a, b, c), attempts=600)
        # A's sender stops (as if A died right after accepting): the join is accepted
        # and queued, and nothing is sent.
        await a.services.sender.stop()
        await client_join(c, carol, room, via=a)
        _, join_id = await a.services.rooms.get_membership(carol.user_id, room)
        assert join_id is not None and await has_accepted(a, join_id)
        assert await a.services.sender.queue_depth(name(b)) == (1, 0)
        assert not await has_accepted(b, join_id)
        assert announcements(a, "join") == 1  # counted when the queuing transaction committed
        # A stops and starts again on its database: it announces the join to B.
        a = await trio.restart(0)
        await eventually(lambda: has_accepted(b, join_id), attempts=600)
        body = await raw_sync(b, bob, None, 0)
        assert any(member(carol.user_id, "join")(e) for e in room_events(body, room))
        await eventually(lambda: quiet(a, b, c), attempts=600)
        assert metric(b, "hs_inbound_duplicate_pdus_total") == 0
        assert inbound_from(c, a) == 0  # never to the joiner's server


async def test_join_accepted_before_a_is_killed_is_announced_after_restart(
    trio: Trio, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    a, b, c = trio.servers
    alice, bob, carol = f"@alice:{name(a)}", f"@bob:{name(b)}", f"@carol:{name(c)}"
    room = await a.services.rooms.create_room(alice, room_version="11", preset="public_chat")
    await b.services.rooms.join(bob, room, via=[name(a)])
    await eventually(lambda: quiet(a, b, c), attempts=600)
    # A goes on in a process of its own (same database, name and key); B goes down.
    await trio.stop(0)
    await trio.stop(1)
    cfg_file = tmp_path / "a.yaml"
    cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(trio.configs[0])))
    log = tmp_path / "a.log"
    health = f"https://localhost:{trio.configs[0].listeners.federation.port}/_matrix/federation/v1/version"
    ctx = ssl.create_default_context(cafile=str(test_ca[0]))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True)) as http:
        with server_process(cfg_file, log) as proc:
            await wait_ready(http, health, proc)
            # C's user joins through A; A accepts (the reply comes after the commit) and
            # cannot reach B. SIGKILL at once.
            await c.services.rooms.join(carol, room, via=[name(a)])
            proc.kill()
            assert proc.wait(timeout=10) == -9
        _, join_id = await c.services.rooms.get_membership(carol, room)
        assert join_id is not None
        # B comes back, then A: A announces the join it had accepted.
        b = await trio.start(1)
        with server_process(cfg_file, log) as proc:
            await wait_ready(http, health, proc)
            await eventually(lambda: has_accepted(b, join_id), attempts=600)
            assert await b.services.rooms.get_membership(carol, room) == ("join", join_id)
            assert metric(b, "hs_inbound_pdus_total", origin=name(a)) == 1
            assert metric(b, "hs_inbound_duplicate_pdus_total") == 0
