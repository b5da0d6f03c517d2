"""Initial /sync of a large room, with and without lazy-loaded members (SQLite, loopback).

One room of MEMBERS local members where three of them talk; the syncing user asks an
initial /sync with a timeline of 10 events, with the whole state, then with
``lazy_load_members``. Prints median time and response size.

Run: .venv/bin/python bench/bench_sync_lazy.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from tests.clients import base_url, nio_user
from tests.servers import make_config, running_server

MEMBERS = 1000
ROUNDS = 7


async def main(tmp: Path) -> None:
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    cfg = make_config(tmp / "a", {"engine": "sqlite", "path": str(tmp / "a.db")}, ca)
    async with running_server(cfg) as server, nio_user(server, "alice") as alice:
        rooms = server.services.rooms
        room_id = await rooms.create_room(alice.user_id, preset="public_chat")
        members = [f"@m{i}:{cfg.server_name}" for i in range(MEMBERS - 1)]
        for user in members:
            await rooms.join(user, room_id)
        for i in range(30):
            await rooms.send_event(members[i % 3], room_id, "m.room.message", {"msgtype": "m.text", "body": str(i)})
        filters = {
            "full state": {"room": {"timeline": {"limit": 10}}},
            "lazy_load_members": {"room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": True}}},
        }
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {alice.access_token}"}) as http:
            for name, flt in filters.items():
                url = f"{base_url(server)}/_matrix/client/v3/sync?filter={quote(json.dumps(flt))}"
                times, size = [], 0
                for _ in range(ROUNDS):
                    t = time.perf_counter()
                    async with http.get(url) as resp:
                        body = await resp.read()
                        assert resp.status == 200, body[:200]
                    times.append(time.perf_counter() - t)
                    size = len(body)
                state = json.loads(body)["rooms"]["join"][room_id]["state"]["events"]
                print(f"initial /sync, {MEMBERS} members, {name}: median {statistics.median(times) * 1000:.1f} ms,"
                      f" {size / 1024:.0f} KB, {len(state)} state events")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d)))
