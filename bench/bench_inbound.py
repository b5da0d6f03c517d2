"""Benchmark of inbound federation: /send acknowledgement latency under a backlog, the
worker's sustained throughput, and peak memory.

A fake remote server (tests/remote.py: its own key and key endpoint over real HTTPS on
loopback) builds a linear room of signed message events. With the worker held, 10,000
events are sent in 50-PDU transactions (the backlog); the worker is then released and,
while it drains, more 50-PDU transactions are sent and each /send acknowledgement is
timed. Every check runs in the worker (format, signatures, hashes, auth x3, persistence).

Prints: ack latency p50/p99 of 50-PDU transactions with the backlog draining, worker
events/s, and the process's peak RSS (which includes the fake remote and the 10,000
pre-built events held by the benchmark itself).

Run: ``.venv/bin/python bench/bench_inbound.py [--engine sqlite|postgres] [--events 10000]``
(postgres: HOMESERVER_TEST_POSTGRES_DSN or a throwaway cluster, as in the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from tests.remote import fake_remote
from tests.servers import make_config, running_server

BATCH = 50


async def db_settings(engine: str, tmp: Path) -> tuple[dict[str, str], str | None]:
    if engine == "sqlite":
        return {"engine": "sqlite", "path": str(tmp / "bench.sqlite")}, None
    from tests.conftest import create_pg_database
    from tests.pgcluster import get_admin_dsn

    admin = get_admin_dsn()
    dsn = await create_pg_database(admin)
    return {"engine": "postgres", "dsn": dsn}, admin


async def run(engine: str, backlog: int, acks: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = (tmp / "ca.crt", tmp / "ca.key")
        generate_ca(*ca)
        settings, admin = await db_settings(engine, tmp)
        config = make_config(tmp / "hs", settings, ca, extra={"logging": {"level": "ERROR"}})
        try:
            async with running_server(config) as server, fake_remote(ca, tmp / "remote") as remote:
                room = remote.room()
                room.create_room()
                await room.teach(server)
                worker = server.services.inbound_worker
                print(f"[{engine}] building {backlog + acks * BATCH} signed events ...", flush=True)
                events = [room.message(f"message {i}") for i in range(backlog + acks * BATCH)]
                worker.pause()
                for i in range(0, backlog, BATCH):
                    status, _ = await remote.send(server, events[i : i + BATCH])
                    assert status == 200
                rest = events[backlog:]
                latencies: list[float] = []
                started = time.perf_counter()
                worker.resume()
                for i in range(0, len(rest), BATCH):
                    t0 = time.perf_counter()
                    status, _ = await remote.send(server, rest[i : i + BATCH])
                    latencies.append(time.perf_counter() - t0)
                    assert status == 200
                    await asyncio.sleep(0.02)  # a steady stream, not a burst
                backlog_left = await server.services.inbox.count()
                assert await worker.wait_idle(3600)
                elapsed = time.perf_counter() - started
                total = backlog + len(rest)
                accepted = await server.services.db.fetchval(
                    "SELECT COUNT(*) FROM events WHERE outcome = 'accepted' AND type = 'm.room.message'"
                )
                assert accepted == total, (accepted, total)
                latencies.sort()
                p50 = statistics.median(latencies) * 1000
                p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000
                rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"[{engine}] /send ack of {BATCH}-PDU transactions while draining "
                      f"(inbox still {backlog_left} after the last ack): p50 {p50:.2f} ms, "
                      f"p99 {p99:.2f} ms ({len(latencies)} transactions)")
                print(f"[{engine}] worker: {total} events in {elapsed:.1f} s = {total / elapsed:.0f} events/s")
                print(f"[{engine}] peak RSS of the whole process: {rss_mb:.0f} MB")
        finally:
            if admin is not None:
                from tests.conftest import drop_pg_database

                await drop_pg_database(admin, settings["dsn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--events", type=int, default=10_000, help="backlog size")
    parser.add_argument("--acks", type=int, default=100, help="timed transactions")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args.engine, args.events, args.acks))


if __name__ == "__main__":
    main()
