"""Hostile m.presence EDUs over federation (signed /send from a fake remote), on both engines
(helper hostile1): entries of wrong types, forged users, and transactions full of large
presence EDUs are dropped or bounded; changes made through the client API are rate-limited.

A 4 MB transaction of 45,000 presence entries used to cost one shared-room query per entry:
3.9 s of work on SQLite and 9.7 s on PostgreSQL for one request. Entries are now reduced to
the last one per user and checked with one query per 500 users (0.4 s).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from homeserver.server import RunningServer
from tests.clients import nio_user, raw
from tests.conftest import DatabaseFactory
from tests.remote import FakeRemote, fake_remote
from tests.servers import make_config, running_server

WAIT = 30.0
V3 = "/_matrix/client/v3"


@pytest.fixture
async def setup(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, FakeRemote]]:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "evil") as evil:
        yield server, evil


def metric(server: RunningServer, name: str, labels: dict[str, str]) -> float:
    return server.services.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # aiohttp's warning about a 4 MB body
async def test_presence_flood_and_junk_are_bounded(setup: tuple[RunningServer, FakeRemote]) -> None:
    server, evil = setup
    origin = evil.server_name
    junk: list[Any] = [
        5, None, [], "x", {"user_id": 5, "presence": "online"}, {"user_id": f"@a:{origin}", "presence": "busy"},
        {"user_id": f"@a:{origin}", "presence": "online", "status_msg": {"a": 1}},
        {"user_id": f"@a:{origin}", "presence": "online", "status_msg": "x" * 2000},
        {"user_id": f"@a:{origin}", "presence": "online", "last_active_ago": -1},
        {"user_id": f"@a:{origin}", "presence": "online", "last_active_ago": 1.5},
        {"user_id": f"@a:{origin}", "presence": "online", "last_active_ago": 10 ** 30},
        {"user_id": f"@a:{origin}", "presence": "online", "currently_active": "yes"},
        {"user_id": "@" + "a" * 300 + f":{origin}", "presence": "online"},
    ]
    edus: list[dict[str, Any]] = [{"edu_type": "m.presence", "content": c} for c in
                                  ({"push": junk}, {"push": "x"}, {}, {"push": {"a": 1}})]
    status, _ = await evil.send(server, [], edus)
    assert status == 200
    assert await server.services.inbound_worker.wait_idle(WAIT)
    # A transaction near the 4 MB limit: 100 EDUs of 450 entries (the same user repeated in
    # half of them).
    flood = [{"edu_type": "m.presence", "content": {"push": [
        {"user_id": f"@u{i if e % 2 else 0}:{origin}", "presence": "online", "status_msg": "hi"} for i in range(450)
    ]}} for e in range(100)]
    started = time.monotonic()
    status, _ = await evil.send(server, [], flood)
    assert status == 200
    assert await server.services.inbound_worker.wait_idle(WAIT)
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed
    assert server.services.presence is not None
    assert server.services.presence.tracker.get(f"@u1:{origin}") is None  # shares no room: not kept
    assert metric(server, "hs_inbound_edus_dropped_total", {"origin": origin, "reason": "malformed"}) > 0


async def test_presence_changes_are_rate_limited(setup: tuple[RunningServer, FakeRemote]) -> None:
    """Each visible change wakes the long-polls of every room the user is in: a loop of
    changes is refused (PUT: 429) or ignored (/sync's set_presence) past a burst."""
    server, _ = setup
    async with nio_user(server) as alice:
        path = f"{V3}/presence/{alice.user_id}/status"
        statuses = []
        for i in range(40):
            status, body = await raw(server, "PUT", path, token=alice.access_token,
                                     json={"presence": "online" if i % 2 else "unavailable", "status_msg": str(i)})
            statuses.append(status)
            if status == 429:
                assert body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
        assert statuses[:20] == [200] * 20 and 429 in statuses[20:], statuses
        status, body = await raw(server, "GET", path, token=alice.access_token)
        assert status == 200
        before = body["presence"]
        wanted = "online" if before == "unavailable" else "unavailable"
        status, _ = await raw(server, "GET", f"{V3}/sync?timeout=0&set_presence={wanted}", token=alice.access_token)
        assert status == 200  # /sync still answers; its set_presence is ignored
        status, body = await raw(server, "GET", path, token=alice.access_token)
        assert status == 200 and body["presence"] == before, body
