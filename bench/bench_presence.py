"""Benchmark of presence.

1. Across two servers on loopback (SQLite each, real HTTPS federation): the time from
   ``PUT /presence/{userId}/status`` on server A until the change is in the ``/sync`` answer
   of a user on server B sharing a room (B's long-poll already waiting). The federation
   rate limit is set to 1 ms for the run, so every change goes out at once.
2. In memory: one run of the timeouts over 10,000 online local users (done every second),
   and one received update (``set_remote``) with 10,000 remote users held.

Run: ``.venv/bin/python bench/bench_presence.py [changes]`` (default 50)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.client_api import presence as presence_api
from homeserver.config import RateLimitConfig
from homeserver.crypto.tls import generate_ca
from homeserver.presence.state import PresenceTracker
from homeserver.server import RunningServer
from tests.clients import base_url, nio_user
from tests.servers import make_config, running_server

CHANGES = int(sys.argv[1]) if len(sys.argv) > 1 else 50
V3 = "/_matrix/client/v3"
# The benchmark changes presence faster than users may (client_api/presence.py CHANGE_RATE).
presence_api.CHANGE_RATE = RateLimitConfig(per_second=1000.0, burst_count=1000)
FAST = {"presence": {"federation_interval_seconds": 0.001, "offline_timeout_seconds": 3600.0}}


async def across(tmp: Path) -> None:
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    cfg_a = make_config(tmp / "a", {"engine": "sqlite", "path": str(tmp / "a.db")}, ca, extra=FAST)
    cfg_b = make_config(tmp / "b", {"engine": "sqlite", "path": str(tmp / "b.db")}, ca, extra=FAST)
    async with running_server(cfg_a) as a, running_server(cfg_b) as b, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob, aiohttp.ClientSession() as http:

        async def call(server: RunningServer, token: str, method: str, path: str, body: Any = None) -> Any:
            async with http.request(method, base_url(server) + path, json=body,
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        room = (await call(a, alice.access_token, "POST", f"{V3}/createRoom", {"preset": "public_chat"}))["room_id"]
        await call(b, bob.access_token, "POST", f"{V3}/join/{room}?server_name={a.services.config.server_name}", {})
        since = (await call(b, bob.access_token, "GET", f"{V3}/sync?set_presence=offline"))["next_batch"]

        def poll() -> asyncio.Task[Any]:
            return asyncio.create_task(call(b, bob.access_token, "GET",
                                            f"{V3}/sync?timeout=30000&set_presence=offline&since={since}"))

        async def one(i: int) -> float:
            nonlocal since
            task = poll()
            for _ in range(10_000):  # until the long-poll is waiting on B (bounded)
                if b.services.notifier.waiting:
                    break
                await asyncio.sleep(0.001)
            started = time.perf_counter()
            await call(a, alice.access_token, "PUT", f"{V3}/presence/{alice.user_id}/status",
                       {"presence": "online", "status_msg": f"s{i}"})
            while True:
                body = await task
                since = body["next_batch"]
                if any(e["content"].get("status_msg") == f"s{i}" for e in body["presence"]["events"]):
                    return (time.perf_counter() - started) * 1000
                task = poll()

        cold = await one(-1)
        times = sorted([await one(i) for i in range(CHANGES)])
        p95 = times[min(len(times) - 1, round(0.95 * len(times)) - 1)]
        print(f"PUT /presence on A -> /sync on B over {CHANGES} changes: cold {cold:.0f} ms;"
              f" median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, max {times[-1]:.1f} ms")


def in_memory() -> None:
    t = PresenceTracker(idle_ms=300_000, offline_ms=30_000, max_remote=10_000)
    now = 1_700_000_000_000
    for i in range(10_000):
        t.sync(f"@u{i}:a.test", "online", now)
    runs = []
    for k in range(20):
        started = time.perf_counter()
        t.tick(now + 1000 * (k + 1), lambda _: True)
        runs.append((time.perf_counter() - started) * 1000)
    print(f"timeouts over 10,000 online local users: median {statistics.median(runs):.2f} ms per tick")
    for i in range(10_000):
        t.set_remote(f"@r{i}:b.test", "online", now)
    started = time.perf_counter()
    n = 50_000
    for i in range(n):
        t.set_remote(f"@r{i % 20_000}:b.test", "unavailable" if i % 2 else "online", now + i)
    print(f"received update with 10,000 remote users held: {(time.perf_counter() - started) / n * 1e6:.1f} µs"
          f" each (evicted {t.evicted})")


if __name__ == "__main__":
    in_memory()
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(across(Path(d)))
