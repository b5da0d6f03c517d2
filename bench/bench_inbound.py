"""Benchmark of inbound federation: /send acknowledgement latency under a backlog, the
worker's sustained throughput, and the server's peak memory.

The homeserver runs as its own process (``python -m homeserver run``), as in production,
so the numbers are the server's and not the load generator's. A fake remote server
(tests/remote.py: its own key and key endpoint over real HTTPS on loopback) builds a
linear room of signed message events; the room's first events are taught to the server
beforehand (in-process, on the same database). The backlog is sent as fast as the server
answers, then more 50-PDU transactions are sent at a steady pace and each acknowledgement
is timed (bodies and X-Matrix headers are prepared before timing). Every check runs in the
worker (format, signatures, hashes, auth x3, persistence); throughput is read from the
server's /metrics.

Run: ``.venv/bin/python bench/bench_inbound.py [--engine sqlite|postgres] [--events 10000] [--sqlite-sync full]``
(postgres: HOMESERVER_TEST_POSTGRES_DSN or a throwaway cluster, as in the tests).
``BENCH_CHECK_PROCESSES=0`` runs the server without its check helper; the load generator
freezes what it built out of its own garbage collections, which would otherwise count as
the server's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import logging
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from homeserver.crypto.xmatrix import authorization_header
from tests.remote import fake_remote
from tests.servers import free_port, make_config, running_server

BATCH = 50


async def db_settings(engine: str, tmp: Path, sqlite_sync: str) -> tuple[dict[str, str], str | None]:
    if engine == "sqlite":
        return {"engine": "sqlite", "path": str(tmp / "bench.sqlite"), "sqlite_sync": sqlite_sync}, None
    from tests.conftest import create_pg_database
    from tests.pgcluster import get_admin_dsn

    admin = get_admin_dsn()
    dsn = await create_pg_database(admin)
    return {"engine": "postgres", "dsn": dsn}, admin


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def door_seconds(session: aiohttp.ClientSession, metrics_port: int) -> tuple[float, int]:
    """The server's own time in /send handlers (sum, count), from its histogram."""
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        text = await r.text()
    total, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith("hs_send_reply_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("hs_send_reply_seconds_count"):
            count = int(float(line.rsplit(" ", 1)[1]))
    return total, count


async def processed(session: aiohttp.ClientSession, metrics_port: int) -> int:
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hs_events_processed_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def run(engine: str, backlog: int, acks: int, sqlite_sync: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = (tmp / "ca.crt", tmp / "ca.key")
        generate_ca(*ca)
        settings, admin = await db_settings(engine, tmp, sqlite_sync)
        metrics_port = free_port()
        config = make_config(tmp / "hs", settings, ca, extra={
            "logging": {"level": "ERROR"},
            # BENCH_CHECK_PROCESSES=0 runs without the check helper (every check inline).
            **({"inbound": {"check_processes": int(os.environ["BENCH_CHECK_PROCESSES"])}}
               if os.environ.get("BENCH_CHECK_PROCESSES") else {}),
            "listeners": {"metrics": {"enabled": True, "bind": "127.0.0.1", "port": metrics_port}},
        })
        cfg_file = tmp / "hs.yaml"
        cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(config)))
        proc: subprocess.Popen[bytes] | None = None
        try:
            async with fake_remote(ca, tmp / "remote") as remote:
                room = remote.room()
                room.create_room()
                async with running_server(config) as teacher:
                    await room.teach(teacher)
                total = backlog + acks * BATCH
                print(f"[{engine}] building {total} signed events ...", flush=True)
                events = [room.message(f"message {i}") for i in range(total)]
                dest = config.server_name
                prepared = []
                for n, i in enumerate(range(0, total, BATCH)):
                    body = remote.transaction([e.pdu for e in events[i : i + BATCH]])
                    path = f"/_matrix/federation/v1/send/{quote(f'bench{n}', safe='')}"
                    header = authorization_header(remote.key, remote.server_name, dest, "PUT", path, body)
                    prepared.append((path, json.dumps(body).encode(), header))
                # The load generator's own garbage collections must not count as the server's
                # latency: what it built so far (15,000 signed events) is frozen out of them.
                del events
                gc.collect()
                gc.freeze()
                log = open(os.environ.get("BENCH_SERVER_LOG", str(tmp / "server.log")), "wb")  # noqa: ASYNC230
                # BENCH_SERVER_PREFIX="-m cProfile -o FILE" profiles the server process.
                prefix = os.environ.get("BENCH_SERVER_PREFIX", "").split()
                proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
                    [sys.executable, *prefix, "-m", "homeserver", "run", "-c", str(cfg_file)],
                    stdout=subprocess.DEVNULL, stderr=log,
                )
                ctx = ssl.create_default_context(cafile=str(ca[0]))
                base = f"https://localhost:{config.listeners.federation.port}"
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
                    for _ in range(300):
                        try:
                            async with s.get(f"{base}/_matrix/federation/v1/version") as r:
                                if r.status == 200:
                                    break
                        except aiohttp.ClientError:
                            pass
                        await asyncio.sleep(0.1)

                    async def put(path: str, data: bytes, header: str) -> float:
                        t0 = time.perf_counter()
                        async with s.put(f"{base}{path}", data=data, headers={
                            "Authorization": header, "Content-Type": "application/json"}) as r:
                            assert r.status == 200, await r.text()
                            await r.read()
                        return time.perf_counter() - t0

                    started = time.perf_counter()
                    n_backlog = backlog // BATCH
                    backlog_acks = [await put(path, data, header) for path, data, header in prepared[:n_backlog]]
                    backlog_sent = time.perf_counter() - started
                    done_at_backlog = await processed(s, metrics_port)
                    in_backlog = backlog - done_at_backlog
                    door_before = await door_seconds(s, metrics_port)
                    latencies = []
                    for path, data, header in prepared[n_backlog:]:
                        latencies.append(await put(path, data, header))
                        await asyncio.sleep(0.02)  # a steady stream, not a burst
                    door_after = await door_seconds(s, metrics_port)
                    left_after = total - await processed(s, metrics_port)
                    drain_started = time.perf_counter()
                    while await processed(s, metrics_port) < total:  # noqa: ASYNC110 - another process
                        await asyncio.sleep(0.25)
                    elapsed = time.perf_counter() - started
                    drain = time.perf_counter() - drain_started
                latencies.sort()
                p50 = statistics.median(latencies) * 1000
                p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000
                backlog_acks.sort()
                print(f"[{engine}] backlog: {n_backlog} transactions sent back to back in {backlog_sent:.1f} s, "
                      f"ack p50 {statistics.median(backlog_acks) * 1000:.2f} ms")
                print(f"[{engine}] backlog when timing began: {in_backlog} events; still "
                      f"{left_after} after the last timed ack")
                print(f"[{engine}] /send ack of {BATCH}-PDU transactions while draining: "
                      f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(latencies)} transactions)")
                door_n = door_after[1] - door_before[1]
                if door_n:
                    print(f"[{engine}] of which in the /send handler (server side, after the request signature "
                          f"check): mean {(door_after[0] - door_before[0]) / door_n * 1000:.2f} ms")
                print(f"[{engine}] worker, sustained (the last {left_after} events, no /send arriving): "
                      f"{left_after / drain:.0f} events/s")
                print(f"[{engine}] worker, overall (while answering every /send first): {total} events in "
                      f"{elapsed:.1f} s = {total / elapsed:.0f} events/s")
                print(f"[{engine}] peak RSS of the server process: {peak_rss_mb(proc.pid):.0f} MB")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
            if admin is not None:
                from tests.conftest import drop_pg_database

                await drop_pg_database(admin, settings["dsn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--events", type=int, default=10_000, help="backlog size")
    parser.add_argument("--acks", type=int, default=100, help="timed transactions")
    parser.add_argument("--sqlite-sync", choices=["normal", "full"], default="normal",
                        help="database.sqlite_sync of the server (full: each commit synced before it is acknowledged)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(run(args.engine, args.events, args.acks, args.sqlite_sync))


if __name__ == "__main__":
    main()
