"""A 200 from ``PUT /send`` is a promise: a homeserver killed with SIGKILL right after it
answered loses nothing and does nothing twice.

The server runs as its own process (``python -m homeserver run``), on SQLite and on
PostgreSQL. A fake remote (tests/remote.py) sends 400 signed message events of one room as
8 transactions of 50 PDUs, back to back; the moment the 8th 200 arrives the process gets
SIGKILL, with the worker typically still draining the inbox (how far it got is printed, not
asserted: the guarantee must hold either way). After a restart on the same database, every
one of the 400 events is stored exactly once with outcome ``accepted`` and the inbox is
empty; and a transaction sent again with its old txnId is answered with its first reply
and counted as a repeat, enqueueing nothing. This holds only because the inbox and the
(origin, txnId) rows are written durably before the 200 goes out: a reply given from
memory, or an inbox kept in memory, would leave events missing after the restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from homeserver.crypto.xmatrix import authorization_header
from homeserver.storage.database import Database, open_database
from tests.conftest import DatabaseFactory
from tests.procs import server_process
from tests.remote import fake_remote
from tests.servers import free_port, make_config, running_server

EVENTS = 400
BATCH = 50
START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 60.0


async def wait_ready(s: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            async with s.get(f"{base}/_matrix/federation/v1/version") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the server did not answer within the start timeout")


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 10
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the killed server did not exit"
        await asyncio.sleep(0.01)
    return proc.returncode


async def metric(s: aiohttp.ClientSession, port: int, name: str) -> float:
    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((f"{name}{{", f"{name} ")))


async def counts(db: Database) -> tuple[int, int, int]:
    """(accepted messages, distinct accepted message IDs, inbox entries)."""
    accepted = await db.fetchval("SELECT COUNT(*) FROM events WHERE outcome = 'accepted' AND type = 'm.room.message'")
    distinct = await db.fetchval(
        "SELECT COUNT(DISTINCT event_id) FROM events WHERE outcome = 'accepted' AND type = 'm.room.message'"
    )
    inbox = await db.fetchval("SELECT COUNT(*) FROM inbox")
    return int(accepted or 0), int(distinct or 0), int(inbox or 0)


def tail(log: Path, lines: int = 60) -> str:
    if not log.exists():
        return "(no server log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


async def test_sigkill_after_200_loses_nothing(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    settings = await db_factory.new_settings()
    metrics_port = free_port()
    config = make_config(tmp_path / "hs", settings, test_ca, extra={
        "logging": {"level": "WARNING"},
        "listeners": {"metrics": {"enabled": True, "bind": "127.0.0.1", "port": metrics_port}},
    })
    cfg_file = tmp_path / "hs.yaml"
    cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    log = tmp_path / "server.log"

    def open_db() -> Any:
        return open_database(settings["engine"], path=settings.get("path"), dsn=settings.get("dsn"))

    try:
        async with fake_remote(test_ca, tmp_path / "remote") as remote:
            room = remote.room()
            room.create_room()
            async with running_server(config) as teacher:
                await room.teach(teacher)
            events = [room.message(f"message {i}") for i in range(EVENTS)]
            expected = {e.event_id for e in events}
            prepared: list[tuple[str, bytes, str]] = []
            for n, i in enumerate(range(0, EVENTS, BATCH)):
                body = remote.transaction([e.pdu for e in events[i : i + BATCH]])
                path = f"/_matrix/federation/v1/send/{quote(f'crash{n}', safe='')}"
                header = authorization_header(remote.key, remote.server_name, config.server_name, "PUT", path, body)
                prepared.append((path, json.dumps(body).encode(), header))

            ctx = ssl.create_default_context(cafile=str(test_ca[0]))
            base = f"https://localhost:{config.listeners.federation.port}"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True)) as s:

                async def put(path: str, data: bytes, header: str) -> Any:
                    async with s.put(f"{base}{path}", data=data,
                                     headers={"Authorization": header, "Content-Type": "application/json"}) as r:
                        assert r.status == 200, await r.text()
                        return await r.json()

                # 1. Eight transactions back to back; SIGKILL the moment the 8th 200 is in.
                replies = []
                with server_process(cfg_file, log) as proc:
                    await wait_ready(s, base, proc)
                    for path, data, header in prepared:
                        replies.append(await put(path, data, header))
                    proc.kill()
                    assert await wait_exit(proc) == -9
                for reply, i in zip(replies, range(0, EVENTS, BATCH), strict=True):
                    assert reply == {"pdus": {e.event_id: {} for e in events[i : i + BATCH]}}

                db = await open_db()
                try:
                    accepted, _, inbox = await counts(db)
                    # Informational: the guarantee must hold whatever the worker had done.
                    print(f"[{settings['engine']}] at SIGKILL: {accepted}/{EVENTS} accepted, {inbox} in the inbox")
                finally:
                    await db.close()

                # 2. Restart on the same database: everything is processed, once.
                with server_process(cfg_file, log) as proc:
                    await wait_ready(s, base, proc)
                    # The last transaction again, same txnId: the first reply, counted as a
                    # repeat, nothing enqueued (no PDU counted as received by this process).
                    path, data, header = prepared[-1]
                    assert await put(path, data, header) == replies[-1]
                    assert await metric(s, metrics_port, "hs_inbound_repeated_transactions_total") == 1
                    assert await metric(s, metrics_port, "hs_inbound_pdus_total") == 0

                    db = await open_db()
                    try:
                        deadline = time.monotonic() + DRAIN_TIMEOUT
                        while (now := await counts(db)) != (EVENTS, EVENTS, 0):
                            assert proc.poll() is None, f"the restarted server exited with {proc.returncode}"
                            assert time.monotonic() < deadline, f"not drained: (accepted, distinct, inbox) = {now}"
                            await asyncio.sleep(0.2)
                        ids = await db.fetchall("SELECT event_id FROM events WHERE type = 'm.room.message'")
                        assert sorted(r[0] for r in ids) == sorted(expected)  # each exactly once
                        outcomes = await db.fetchall(
                            "SELECT DISTINCT outcome FROM events WHERE type = 'm.room.message'"
                        )
                        assert [r[0] for r in outcomes] == ["accepted"]
                        # And the repeat enqueued nothing that shows up later.
                        await asyncio.sleep(0.5)
                        assert await counts(db) == (EVENTS, EVENTS, 0)
                    finally:
                        await db.close()
                    assert await metric(s, metrics_port, "hs_inbound_pdus_total") == 0
                    assert proc.poll() is None
    except BaseException:
        print(f"--- server log tail ({log}) ---\n{tail(log)}")
        raise
