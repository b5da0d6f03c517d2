"""Benchmark of send-to-device across two servers on loopback (SQLite each, real HTTPS
federation): the time from ``PUT /sendToDevice`` on server A until the message is in the
``/sync`` answer of the recipient's device on server B (a long-poll waiting on B before the
message is sent, so the wake-up is part of the figure). Prints the median and p95.

Run: ``.venv/bin/python bench/bench_to_device.py [messages]`` (default 50)
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

from homeserver.crypto.tls import generate_ca
from homeserver.server import RunningServer
from tests.clients import base_url, nio_user
from tests.servers import make_config, running_server

MESSAGES = int(sys.argv[1]) if len(sys.argv) > 1 else 50
V3 = "/_matrix/client/v3"


async def main(tmp: Path) -> None:
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    cfg_a = make_config(tmp / "a", {"engine": "sqlite", "path": str(tmp / "a.db")}, ca)
    cfg_b = make_config(tmp / "b", {"engine": "sqlite", "path": str(tmp / "b.db")}, ca)
    async with running_server(cfg_a) as a, running_server(cfg_b) as b, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob, aiohttp.ClientSession() as http:

        async def call(server: RunningServer, token: str, method: str, path: str, body: Any = None) -> Any:
            async with http.request(method, base_url(server) + path, json=body,
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        since = (await call(b, bob.access_token, "GET", f"{V3}/sync"))["next_batch"]

        async def one(i: int) -> float:
            nonlocal since
            poll = asyncio.create_task(call(b, bob.access_token, "GET", f"{V3}/sync?timeout=30000&since={since}"))
            for _ in range(10_000):  # until the long-poll is waiting on B (bounded)
                if b.services.notifier.waiting:
                    break
                await asyncio.sleep(0.001)
            started = time.perf_counter()
            await call(a, alice.access_token, "PUT", f"{V3}/sendToDevice/m.bench/t{i}",
                       {"messages": {bob.user_id: {bob.device_id: {"i": i}}}})
            while True:
                body = await poll
                since = body["next_batch"]
                if any(e["content"].get("i") == i for e in body["to_device"]["events"]):
                    return (time.perf_counter() - started) * 1000
                poll = asyncio.create_task(call(b, bob.access_token, "GET", f"{V3}/sync?timeout=30000&since={since}"))

        cold = await one(-1)  # key fetches, TLS handshakes
        times = sorted([await one(i) for i in range(MESSAGES)])
        p95 = times[min(len(times) - 1, round(0.95 * len(times)) - 1)]
        print(f"/sendToDevice on A -> /sync on B over {MESSAGES} messages: cold {cold:.0f} ms;"
              f" median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, max {times[-1]:.1f} ms")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d)))
