"""Benchmark of the outbound sender (homeserver.federation.sender) on loopback.

1. Fan-out: one server (SQLite) in a room with members on 50 other servers (real HTTPS
   receivers that verify our X-Matrix signatures). After a warm-up event (keys fetched,
   connections open), prints the time from persisting one event (queued in the same
   transaction) until all 50 destinations have acknowledged it (target: 500 ms).
2. Blackholes: 20 destinations accept TCP and never answer. Prints the sockets the
   outbound client holds over time (target: at most the per-host limit each, back to zero
   between retries) while the healthy destination keeps being served.

Run: ``.venv/bin/python bench/bench_outbound.py``
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
from homeserver.net.client import split_server_name
from tests.local_room import LocalRoom
from tests.outbound_receiver import Blackhole, Receiver
from tests.servers import make_config, running_server

DESTINATIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 50
EVENTS = 10
HOLES = 20
PER_HOST = 4


async def fan_out(tmp: Path, ca: tuple[Path, Path]) -> None:
    receivers = [Receiver(tmp / f"r{i}", ca) for i in range(DESTINATIONS)]
    cfg = make_config(tmp / "a", {"engine": "sqlite", "path": str(tmp / "a.db")}, ca,
                      extra={"federation": {"max_connections": 200}})
    try:
        for r in receivers:
            await r.start()
        async with running_server(cfg) as a:
            room = await LocalRoom(a.services).create()
            for i, r in enumerate(receivers):
                await room.join_remote(f"@u{i}:{r.server_name}")

            async def one(body: str) -> float:
                started = time.perf_counter()
                event = await room.message(body)
                await asyncio.gather(*(r.wait_for(lambda x, e=event.event_id: e in x.pdu_counts())
                                       for r in receivers))
                return (time.perf_counter() - started) * 1000

            cold = await one("warm-up")
            times = [await one(f"m{i}") for i in range(EVENTS)]
            dup = sum(c - 1 for r in receivers for c in r.pdu_counts().values())
            print(f"fan-out to {DESTINATIONS} destinations: cold {cold:.0f} ms (key fetches, TLS);"
                  f" warm median {statistics.median(times):.1f} ms, max {max(times):.1f} ms"
                  f" over {EVENTS} events (target 500 ms); duplicate deliveries {dup}")
    finally:
        for r in receivers:
            await r.close()


async def blackholes(tmp: Path, ca: tuple[Path, Path]) -> None:
    holes = [Blackhole() for _ in range(HOLES)]
    for h in holes:
        await h.start()
    good = Receiver(tmp / "good", ca)
    await good.start()
    cfg = make_config(tmp / "b", {"engine": "sqlite", "path": str(tmp / "b.db")}, ca, extra={
        "federation": {"connect_timeout": 2.0, "request_timeout": 3.0,
                       "max_connections_per_host": PER_HOST, "max_connections": 100},
        "outbound": {"backoff_initial_seconds": 1.0, "backoff_ceiling_seconds": 2.0, "send_timeout": 3.0},
    })
    try:
        async with running_server(cfg) as a:
            client = a.services.federation_client
            room = await LocalRoom(a.services).create()
            await room.join_remote(f"@g:{good.server_name}")
            for i, h in enumerate(holes):
                await room.join_remote(f"@h{i}:{h.server_name}")
            # Besides /send, each hole also gets 8 concurrent fetches (as the inbound side
            # would make while processing its events): all share the per-host limit.
            fetches = [asyncio.create_task(client.get_json(h.server_name, "/_matrix/federation/v1/event/$x"))
                       for h in holes for _ in range(8)]
            started = time.perf_counter()
            msgs = [await room.message(f"m{i}") for i in range(5)]
            await good.wait_for(lambda r: len(r.pdu_ids()) == len(msgs))
            served_ms = (time.perf_counter() - started) * 1000
            samples: list[tuple[int, int, int]] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                counts = [client.open_connections("https://{}:{}".format(*split_server_name(h.server_name)))
                          for h in holes]
                samples.append((client.open_connections(), max(counts), sum(counts)))
                await asyncio.sleep(0.01)
            await asyncio.gather(*fetches, return_exceptions=True)
            totals = [t for t, _, _ in samples]
            print(f"{HOLES} blackholed destinations (per-host limit {PER_HOST}): healthy destination served"
                  f" 5 events in {served_ms:.0f} ms; client sockets peak {max(totals)} total,"
                  f" {max(p for _, p, _ in samples)} per host; towards the holes min {min(h for _, _, h in samples)}"
                  f" (between retries), max {max(h for _, _, h in samples)};"
                  f" hole-side peak {max(h.peak for h in holes)} per host")
        print(f"after stop: {sum(h.open for h in holes)} sockets still open at the holes")
    finally:
        for h in holes:
            await h.close()
        await good.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = (tmp / "ca.crt", tmp / "ca.key")
        generate_ca(*ca)
        await fan_out(tmp, ca)
        await blackholes(tmp, ca)


if __name__ == "__main__":
    asyncio.run(main())
