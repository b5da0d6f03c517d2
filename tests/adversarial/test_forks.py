"""Forks cost O(N), not O(N^2) (issue 17, finding 8): many events citing the same parent
are processed in time that grows linearly, states shared by forward extremities are read
once per distinct state group and resolved once, and a local send afterwards stays fast.

Both engines. The persister is driven directly for the counts (a counting wrapper around
the state resolution and the state-group reads); the flood comes from a fake remote over
real HTTPS /send into a real server."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import homeserver.rooms.heads as heads_module
from homeserver.events.event import Event, StateKey
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.persist import EventPersister
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.migrations import migrate
from tests.conftest import DatabaseFactory
from tests.remote import fake_remote
from tests.servers import make_config, running_server
from tests.unit.events.builders import ALICE, BOB, standard_room

FORKS = 1000  # remote forks of one parent in the flood test
PROCESS_BOUND = 20.0  # seconds to process them (before the fix: 131 s for 1,000)
LOCAL_SEND_BOUND = 0.1  # seconds, median of a few local sends afterwards (before: 315 ms)


@pytest.fixture
async def persister(db: Database) -> EventPersister:
    await migrate(db)
    return EventPersister(EventStore(db))


class Counting:
    """Counts calls of the state resolution and of the state-group reads."""

    def __init__(self, persister: EventPersister, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resolutions = 0
        self.group_reads = 0
        real_resolve = heads_module.resolve_state
        store = persister.store
        real_load = store.load_state_group

        def resolve(version: RoomVersion, states: Sequence[Mapping[StateKey, str]], lookup: Any) -> Any:
            self.resolutions += 1
            return real_resolve(version, states, lookup)

        async def load(group: int, conn: Any = None) -> Mapping[StateKey, str]:
            self.group_reads += 1
            return await real_load(group, conn)

        monkeypatch.setattr(heads_module, "resolve_state", resolve)
        monkeypatch.setattr(store, "load_state_group", load)


async def persist(p: EventPersister, event: Event) -> None:
    before = await p.compute_state_before(event.room_version, event.prev_events) if event.prev_events else {}
    await p.persist_event(event, Outcome.ACCEPTED, before)


async def test_forks_of_one_state_read_it_once_per_event(
    persister: EventPersister, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N messages citing the same parent: each reads the shared state a bounded number of
    times (not once per forward extremity) and nothing is resolved."""
    room = standard_room(KNOWN_ROOM_VERSIONS["12"])
    room.set_member(BOB, "join")
    for e in room.events:
        await persist(persister, e)
    base = room.events[-1]
    current = await persister.store.get_current_state_ids(room.room_id)
    count = Counting(persister, monkeypatch)
    n = 80
    forks = [room.make("m.room.message", BOB, {"msgtype": "m.text", "body": f"fork {i}"}) for i in range(n)]
    for fork in forks:
        assert fork.prev_events == (base.event_id,)
        await persist(persister, fork)
    assert sorted(await persister.store.get_forward_extremities(room.room_id)) == sorted(f.event_id for f in forks)
    assert await persister.store.get_current_state_ids(room.room_id) == current
    assert count.resolutions == 0
    # Before: every event read the state after every extremity (n * (n - 1) / 2 = 3,160).
    assert count.group_reads <= 5 * n, count.group_reads
    # An event citing them all sees the one state, read once per distinct group.
    reads = count.group_reads
    assert await persister.compute_state_before(room.version, [f.event_id for f in forks]) == current
    assert count.group_reads - reads <= 1
    assert count.resolutions == 0


async def test_repeated_distinct_states_are_resolved_once(
    persister: EventPersister, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two forks with different state, then many messages on each: the two states are
    resolved once for the set of their state groups, not once per event."""
    room = standard_room(KNOWN_ROOM_VERSIONS["11"])
    room.set_member(BOB, "join")
    for e in room.events:
        await persist(persister, e)
    count = Counting(persister, monkeypatch)
    topic = room.make("m.room.topic", ALICE, {"topic": "one"}, "", ts=1_700_000_000_100)
    name = room.make("m.room.name", ALICE, {"name": "two"}, "", ts=1_700_000_000_200)
    await persist(persister, topic)
    await persist(persister, name)
    assert count.resolutions == 1  # the head after the second fork
    n = 60
    messages = [
        room.make("m.room.message", BOB, {"msgtype": "m.text", "body": f"m{i}"},
                  prev_events=[(topic if i % 2 else name).event_id])
        for i in range(n)
    ]
    for m in messages:
        await persist(persister, m)
    current = await persister.store.get_current_state_ids(room.room_id)
    assert current[("m.room.topic", "")] == topic.event_id
    assert current[("m.room.name", "")] == name.event_id
    # Before: one resolution per message (61 in all).
    assert count.resolutions <= 2, count.resolutions
    assert await persister.compute_state_before(room.version, [m.event_id for m in messages]) == current
    assert count.resolutions <= 2, count.resolutions
    stats = persister.heads.counts
    assert stats.cached >= n - 2


async def test_a_remote_flood_of_forks_is_processed_in_linear_time(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    """A remote server sends FORKS messages all citing the same parent over /send; they are
    all accepted within PROCESS_BOUND, the state reads stay O(N), and a local user's send
    afterwards (with about FORKS forward extremities) is fast."""
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "remote") as remote:
        services = server.services
        room = remote.room()
        room.create_room()
        local = f"@local:{config.server_name}"
        us = SimpleNamespace(server_name=config.server_name, key=services.signing_key)
        room.build("m.room.member", local, {"membership": "join"}, local, signer=us)  # type: ignore[arg-type]
        await room.teach(server)
        base = room.events[-1].event_id
        forks = [room.message(f"fork {i}", prev=[base], add=False) for i in range(FORKS)]
        started = time.perf_counter()
        for i in range(0, FORKS, 50):
            status, body = await remote.send(server, forks[i:i + 50])
            assert status == 200, body
        assert await services.inbound_worker.wait_idle(PROCESS_BOUND), "forks not processed in time"
        elapsed = time.perf_counter() - started
        store = services.event_store
        outcomes = await store.get_outcomes(f.event_id for f in forks)
        assert set(outcomes.values()) == {Outcome.ACCEPTED} and len(outcomes) == FORKS
        assert len(await store.get_forward_extremities(room.room_id)) == FORKS
        counts = services.persister.heads.counts
        assert counts.states_read <= 2 * FORKS, counts
        assert counts.resolutions == 0, counts
        # A local send builds on the 10 deepest extremities and keeps the rest.
        times = []
        for i in range(5):
            t = time.perf_counter()
            content = {"msgtype": "m.text", "body": str(i)}
            await services.rooms.send_event(local, room.room_id, "m.room.message", content)
            times.append(time.perf_counter() - t)
        assert statistics.median(times) < LOCAL_SEND_BOUND, (elapsed, times)
        assert len(await store.get_forward_extremities(room.room_id)) == FORKS - 5 * 9
