"""Backfill over federation, with two of our servers on loopback (real TLS, keys and
databases, both engines) and matrix-nio users: Bob on B joins Alice's room on A and pages
/messages back past his join; B fetches the history with GET /backfill, checks it and
stores it below its timeline. History visibility decides what Bob sees; a backfill target
that is down or never answers costs /messages a bounded time and nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, JoinResponse, RoomCreateResponse, RoomMessagesResponse, SyncResponse

from homeserver.config import Config
from homeserver.server import RunningServer, start_server
from tests.clients import client_server, msg, nio_user, raw, sync_until, timeline_bodies
from tests.clients import server_name as name
from tests.conftest import DatabaseFactory
from tests.servers import make_config

V3 = "/_matrix/client/v3"
TEXT = "m.room.message"
FAST = {"outbound": {"backoff_initial_seconds": 0.2, "backoff_ceiling_seconds": 1.0}}


def hv_state(visibility: str) -> list[dict[str, Any]]:
    return [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": visibility}}]


async def create_and_join(
    alice: AsyncClient, bob: AsyncClient, visibility: str, before: list[str], after: list[str],
    version: str | None = None,
) -> str:
    """Alice creates a room (``visibility``), sends ``before``, invites Bob, who joins over
    federation; Alice sends ``after``, and Bob's server has it."""
    created = await alice.room_create(name="History", initial_state=hv_state(visibility), room_version=version)
    assert isinstance(created, RoomCreateResponse), created
    room = created.room_id
    for body in before:
        status, _ = await raw_send(alice, room, body)
        assert status == 200
    await alice.room_invite(room, bob.user_id)
    await sync_until(bob, lambda r: room in r.rooms.invite)
    assert isinstance(await bob.join(room), JoinResponse)
    for body in after:
        status, _ = await raw_send(alice, room, body)
        assert status == 200
    if after:
        seen: list[str] = []
        await sync_until(bob, lambda r: bool(seen.extend(timeline_bodies(r, room))) or after[-1] in seen)
    return room


_txn = 0


async def raw_send(client: AsyncClient, room: str, body: str) -> tuple[int, Any]:
    global _txn
    _txn += 1
    async with client.client_session.put(  # type: ignore[union-attr]
        f"{client.homeserver}{V3}/rooms/{room}/send/{TEXT}/bf{_txn}",
        json=msg(body), headers={"Authorization": f"Bearer {client.access_token}"},
    ) as resp:
        return resp.status, await resp.json()


async def page_back(client: AsyncClient, room: str, token: str, *, limit: int = 10) -> list[dict[str, Any]]:
    """Every event /messages gives paging back from ``token`` until there is no ``end``."""
    events: list[dict[str, Any]] = []
    for _ in range(100):
        page = await client.room_messages(room, start=token, limit=limit)
        assert isinstance(page, RoomMessagesResponse), page
        events.extend(e.source for e in page.chunk)
        if not page.end:
            return events
        token = page.end
    raise AssertionError("paging did not end")


def bodies(events: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in events if e["type"] == TEXT and "body" in e.get("content", {})]


async def newest_prev_batch(client: AsyncClient, room: str) -> str:
    """prev_batch of a fresh initial sync whose timeline holds only the newest event."""
    resp = await client.sync(timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 1}}})
    assert isinstance(resp, SyncResponse), resp
    token = resp.rooms.join[room].timeline.prev_batch
    assert token
    return token


async def count_events(server: RunningServer, room: str) -> int:
    return int(await server.services.db.fetchval("SELECT COUNT(*) FROM events WHERE room_id = ?", room))


@pytest.fixture
async def pair(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    # A small backfill limit: several /backfill rounds, and /state_ids at each batch's root.
    extra = {**FAST, "backfill": {"limit": 12}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as a, \
            client_server(db_factory, tmp_path / "b", test_ca, extra) as b:
        yield a, b


@pytest.mark.parametrize("version", ["1", "5", "9", "10", "12"])
async def test_backfill_pages_back_past_the_join(pair: tuple[RunningServer, RunningServer], version: str) -> None:
    a, b = pair
    early = [f"early {i}" for i in range(30)]
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        room = await create_and_join(alice, bob, "shared", early, ["after the join"], version)
        store = b.services.event_store
        extremities = await store.get_forward_extremities(room)
        current = await store.get_current_state_ids(room)
        sync_before = await bob.sync(timeout=0)
        assert isinstance(sync_before, SyncResponse)

        # Bob pages back from just before the newest event: his join, then all of Alice's
        # history, in order, each message once, down to the room's create event.
        token = await newest_prev_batch(bob, room)
        events = await page_back(bob, room, token)
        assert bodies(events) == list(reversed(early))
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids))
        assert events[-1]["type"] == "m.room.create"
        assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in events)
        # Several /backfill rounds (12 events each), each batch's oldest event placed with
        # the state from /state_ids.
        b_metrics = b.services.metrics.registry
        fetches = {kind: b_metrics.get_sample_value("hs_missing_events_fetches_total", {"kind": kind, "result": "ok"})
                   or 0 for kind in ("backfill", "state_ids")}
        assert fetches["backfill"] >= 3 and fetches["state_ids"] >= 2, fetches

        # Stored as history: below the timeline, with no effect on the room's head or
        # current state, and not news for /sync.
        negative = await b.services.db.fetchval(
            "SELECT COUNT(*) FROM events WHERE room_id = ? AND stream_ordering < 0", room)
        assert int(negative) >= len(early)
        assert await store.get_forward_extremities(room) == extremities
        assert await store.get_current_state_ids(room) == current
        later = await bob.sync(timeout=0, since=sync_before.next_batch)
        assert isinstance(later, SyncResponse)
        assert not any(body.startswith("early") for body in timeline_bodies(later, room))

        # Paging again changes nothing: same events, nothing fetched or stored twice.
        held = await count_events(b, room)
        again = await page_back(bob, room, await newest_prev_batch(bob, room))
        assert [e["event_id"] for e in again] == ids
        assert await count_events(b, room) == held
        # One event by ID; and Alice's server received nothing from B (B relays nothing).
        status, body = await raw(b, "GET", f"{V3}/rooms/{room}/event/{ids[5]}", token=bob.access_token)
        assert status == 200 and body["event_id"] == ids[5]
        registry = a.services.metrics.registry
        assert not registry.get_sample_value("hs_inbound_pdus_total", {"origin": name(b)})


async def test_joined_visibility_hides_history_before_the_join(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca, FAST) as a, \
            client_server(db_factory, tmp_path / "b", test_ca, FAST) as b, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        secrets = [f"secret {i}" for i in range(5)]
        room = await create_and_join(alice, bob, "joined", secrets, ["welcome", "newest"])
        events = await page_back(bob, room, await newest_prev_batch(bob, room))
        assert bodies(events) == ["welcome"]
        assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in events)
        # B backfilled them, redacted: A gave B's server only what it may see.
        rows = await b.services.db.fetchall(
            "SELECT event_id FROM events WHERE room_id = ? AND type = ? AND stream_ordering < 0", room, TEXT)
        assert len(rows) == len(secrets)
        for (event_id,) in rows:
            stored = await b.services.event_store.get_event(event_id)
            assert stored is not None and stored.event.content == {}
            status, body = await raw(b, "GET", f"{V3}/rooms/{room}/event/{event_id}", token=bob.access_token)
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        # Alice, joined throughout, still reads everything on A.
        status, body = await raw(a, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=100", token=alice.access_token)
        assert status == 200
        assert bodies(body["chunk"]) == ["newest", "welcome", *reversed(secrets)]


async def test_backfill_target_down_costs_a_bounded_time(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    bound = 1.5
    extra = {**FAST, "backfill": {"timeout": bound, "retry_seconds": 0.0},
             "inbound": {"fetch_backoff_seconds": 0.0}}
    a_cfg: Config = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra=extra)
    b_cfg: Config = make_config(tmp_path / "b", await db_factory.new_settings(), test_ca, extra=extra)
    a = await start_server(a_cfg)
    a_running = True
    b = await start_server(b_cfg)
    hole: asyncio.Server | None = None
    try:
        async with nio_user(b, "bob") as bob:
            async with nio_user(a, "alice") as alice:
                room = await create_and_join(alice, bob, "shared", ["lost 1", "lost 2"], ["last"])
                token = await newest_prev_batch(bob, room)
            await a.stop()
            a_running = False

            async def messages() -> tuple[float, int, Any]:
                started = time.monotonic()
                status, body = await raw(b, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=10&from={token}",
                                         token=bob.access_token)
                return time.monotonic() - started, status, body

            # A is down (connection refused): /messages answers at once with what B holds.
            elapsed, status, body = await messages()
            assert status == 200 and elapsed < bound + 2, elapsed
            assert bodies(body["chunk"]) == [] and "end" not in body
            assert any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id for e in body["chunk"])

            # A accepts connections and never answers: /messages waits the bound, no more.
            hole = await asyncio.start_server(_swallow, "127.0.0.1", a_cfg.listeners.federation.port)
            elapsed, status, body = await messages()
            assert status == 200 and bound * 0.8 <= elapsed < bound + 2, elapsed
            assert bodies(body["chunk"]) == [] and "end" not in body
            failed = b.services.metrics.registry.get_sample_value(
                "hs_missing_events_fetches_total", {"kind": "backfill", "result": "failed"})
            assert failed == 2
            # The client API is still served afterwards.
            status, _ = await raw(b, "GET", f"{V3}/joined_rooms", token=bob.access_token)
            assert status == 200
    finally:
        if hole is not None:
            hole.close()
            await hole.wait_closed()
        await b.stop()
        if a_running:
            await a.stop()


async def _swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_backfill_is_bounded_per_request_and_resumes(pair: tuple[RunningServer, RunningServer]) -> None:
    """With a limit of 12 events per /backfill, a page of 50 needs several rounds: /messages
    makes a few (bounded) and gives ``end`` while more history may be had; the client's
    next request continues where it stopped."""
    a, b = pair
    early = [f"m{i}" for i in range(60)]
    async with nio_user(a, "alice") as alice, nio_user(b, "bob") as bob:
        room = await create_and_join(alice, bob, "shared", early, ["tail"])
        token = await newest_prev_batch(bob, room)
        page = await bob.room_messages(room, start=token, limit=50)
        assert isinstance(page, RoomMessagesResponse), page
        assert page.end, "more history may be had: the page gives end"
        first = bodies([e.source for e in page.chunk])
        assert first == list(reversed(early))[: len(first)]
        rest = await page_back(bob, room, page.end, limit=50)
        assert first + bodies(rest) == list(reversed(early))
        # Nothing backfilled was queued for sending by B.
        queued = await b.services.db.fetchall("SELECT event_id FROM outbound_pdu_queue")
        mine = {r[0] for r in await b.services.db.fetchall(
            "SELECT event_id FROM events WHERE room_id = ? AND sender = ?", room, bob.user_id)}
        assert {r[0] for r in queued} <= mine
