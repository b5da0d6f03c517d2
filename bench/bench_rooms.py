"""Room operations on real servers (SQLite, loopback HTTPS): time to create a room (v12,
private_chat, 10 events), to send a local message (build, auth, persist, queue), and to
join a room on another server of ours over federation (make_join, send_join, verification
of the returned state and auth chain, persistence), as the room grows.

Prints medians in milliseconds. Run: .venv/bin/python bench/bench_rooms.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from tests.servers import make_config, running_server

ROOMS = 20
MESSAGES = 200
JOINERS = (1, 20, 100)  # local members in the room before the remote join


async def main(tmp: Path) -> None:
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    cfg_a = make_config(tmp / "a", {"engine": "sqlite", "path": str(tmp / "a.db")}, ca)
    cfg_b = make_config(tmp / "b", {"engine": "sqlite", "path": str(tmp / "b.db")}, ca)
    async with running_server(cfg_a) as a, running_server(cfg_b) as b:
        rooms_a, rooms_b = a.services.rooms, b.services.rooms
        alice = f"@alice:{cfg_a.server_name}"
        times = []
        for _ in range(ROOMS):
            t = time.perf_counter()
            await rooms_a.create_room(alice, preset="public_chat")
            times.append(time.perf_counter() - t)
        print(f"create_room (v12, 10 events): median {statistics.median(times) * 1000:.1f} ms")
        room_id = await rooms_a.create_room(alice, preset="public_chat")
        times = []
        for i in range(MESSAGES):
            t = time.perf_counter()
            await rooms_a.send_event(alice, room_id, "m.room.message", {"msgtype": "m.text", "body": str(i)})
            times.append(time.perf_counter() - t)
        print(f"send_event (local message): median {statistics.median(times) * 1000:.2f} ms")
        for members in JOINERS:
            room_id = await rooms_a.create_room(alice, preset="public_chat")
            for i in range(members - 1):
                await rooms_a.join(f"@m{i}:{cfg_a.server_name}", room_id)
            times = []
            for j in range(5):
                bob = f"@bob{members}_{j}:{cfg_b.server_name}"
                t = time.perf_counter()
                if j == 0:
                    await rooms_b.join(bob, room_id, via=[cfg_a.server_name])
                else:
                    await rooms_b.join(bob, room_id)  # B is in the room now: a local join
                times.append(time.perf_counter() - t)
            print(f"remote join, {members} members: first (federation) {times[0] * 1000:.1f} ms,"
                  f" then local {statistics.median(times[1:]) * 1000:.1f} ms")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="rooms_bench_") as d:
        asyncio.run(main(Path(d)))
