"""Benchmark of ``POST /search`` over 100,000 messages in one server (SQLite or
PostgreSQL): the messages are written through the persister's own statements
(``EventWriteStore.insert_event``, which indexes them as every persisted event is), in a
room created through the client API whose member joined before them; then timed
``/search`` requests over HTTP (``order_by`` rank and recent, ``limit`` 10) for words of
varied frequency. Prints the p50/p99 per ordering. On PostgreSQL the tables are analyzed
after the load (autovacuum would within a minute; without statistics the plans are poor).

Run: ``.venv/bin/python bench/bench_search.py [--engine sqlite|postgres] [--messages 100000] [--queries 200]``
(postgres: HOMESERVER_TEST_POSTGRES_DSN or a throwaway cluster, as in the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from nio import RoomCreateResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from homeserver.events.event import Event
from homeserver.storage.events import Outcome
from tests.clients import base_url, nio_user
from tests.servers import make_config, running_server

BATCH = 2000
VOCABULARY = 5000
WORDS_PER_MESSAGE = 8


def percentile(sorted_times: list[float], p: float) -> float:
    return sorted_times[min(len(sorted_times) - 1, max(0, round(p * len(sorted_times)) - 1))]


async def db_settings(engine: str, tmp: Path) -> tuple[dict[str, str], str | None]:
    if engine == "sqlite":
        return {"engine": "sqlite", "path": str(tmp / "bench.sqlite")}, None
    from tests.conftest import create_pg_database
    from tests.pgcluster import get_admin_dsn

    admin = get_admin_dsn()
    return {"engine": "postgres", "dsn": await create_pg_database(admin)}, admin


async def run(engine: str, messages: int, queries: int) -> None:
    rng = random.Random(7)
    # Zipf-like word frequencies: a few common words, many rare ones.
    vocabulary = [f"w{i}x" for i in range(VOCABULARY)]
    weights = [1.0 / (i + 1) for i in range(VOCABULARY)]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = (tmp / "ca.crt", tmp / "ca.key")
        generate_ca(*ca)
        settings, admin = await db_settings(engine, tmp)
        try:
            config = make_config(tmp / "hs", settings, ca)
            async with running_server(config) as server, nio_user(server, "alice") as alice, \
                    aiohttp.ClientSession() as http:
                created = await alice.room_create(name="Bench")
                assert isinstance(created, RoomCreateResponse), created
                room_id = created.room_id
                services = server.services
                store, writes = services.event_store, services.persister.writes
                last = (await store.get_forward_extremities(room_id))[0]
                group = await store.get_state_group_after(last)
                version = await store.get_room_version(room_id)
                assert group is not None and version is not None
                started = time.perf_counter()
                ts = 1_700_000_000_000
                for base in range(0, messages, BATCH):
                    async with services.db.transaction() as conn:
                        for i in range(base, min(messages, base + BATCH)):
                            body = " ".join(rng.choices(vocabulary, weights, k=WORDS_PER_MESSAGE))
                            pdu: dict[str, Any] = {
                                "type": "m.room.message", "room_id": room_id, "sender": alice.user_id,
                                "content": {"msgtype": "m.text", "body": body}, "depth": 100 + i,
                                "origin_server_ts": ts + i, "prev_events": [last], "auth_events": [],
                                "hashes": {"sha256": "x"}, "signatures": {},
                            }
                            event = Event.from_pdu(pdu, version, event_id=f"$bench{i}")
                            await writes.insert_event(conn, event, Outcome.ACCEPTED, None, group, group, False)
                load = time.perf_counter() - started
                if engine == "postgres":
                    # What autovacuum does within a minute of such a load: fresh statistics.
                    await services.db.execute("ANALYZE")
                print(f"{engine}: {messages} messages written and indexed in {load:.1f} s")

                async def one(term: str, order: str) -> float:
                    body = {"search_categories": {"room_events": {"search_term": term, "order_by": order}}}
                    t0 = time.perf_counter()
                    async with http.post(base_url(server) + "/_matrix/client/v3/search", json=body,
                                         headers={"Authorization": f"Bearer {alice.access_token}"}) as r:
                        assert r.status == 200, await r.text()
                        found = await r.json()
                    elapsed = (time.perf_counter() - t0) * 1000
                    assert found["search_categories"]["room_events"]["count"] >= 0
                    return elapsed

                await one("w1x", "rank")  # warm-up
                for order in ("rank", "recent"):
                    times = []
                    for q in range(queries):
                        # A mix: common words, mid-frequency words, rare words, two-word queries.
                        pick = [rng.randrange(10), rng.randrange(10, 500), rng.randrange(500, VOCABULARY)][q % 3]
                        term = vocabulary[pick] if q % 4 else f"{vocabulary[pick]} {vocabulary[rng.randrange(50)]}"
                        times.append(await one(term, order))
                    times.sort()
                    print(f"{engine} order_by={order}: {queries} queries, p50 {statistics.median(times):.1f} ms,"
                          f" p99 {percentile(times, 0.99):.1f} ms, max {times[-1]:.1f} ms")
        finally:
            if admin is not None:
                from tests.conftest import drop_pg_database

                await drop_pg_database(admin, settings["dsn"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args.engine, args.messages, args.queries))


if __name__ == "__main__":
    main()
