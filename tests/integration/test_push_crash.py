"""Notifications survive a crash: a homeserver killed with SIGKILL after events were
committed but before its notification pass ran them (the pass is held back by the test-only
``HOMESERVER_TEST_PUSH_PASS_DELAY`` environment variable) evaluates them after the restart,
from its ``push_pass`` cursor: the counts are right and the pusher gets each notification
once. The server runs as its own process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from homeserver.push.notify import DELAY_ENV
from tests.conftest import DatabaseFactory
from tests.integration.test_inbound_crash import tail, wait_exit
from tests.integration.test_pushers import gateway, pusher
from tests.procs import server_process, wait_ready
from tests.servers import free_port, make_config

V3 = "/_matrix/client/v3"
MESSAGES = 3


async def call(s: aiohttp.ClientSession, base: str, method: str, path: str, token: str | None = None,
               body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.request(method, base + path, json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def register(s: aiohttp.ClientSession, base: str, name: str) -> str:
    body = {"username": name, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}}
    return str((await call(s, base, "POST", f"{V3}/register", body=body))["access_token"])


async def unread(s: aiohttp.ClientSession, base: str, token: str, room: str) -> tuple[int, int]:
    body = await call(s, base, "GET", f"{V3}/sync", token)
    got = body.get("rooms", {}).get("join", {}).get(room, {}).get("unread_notifications", {})
    return got.get("notification_count", 0), got.get("highlight_count", 0)


async def test_notifications_of_events_committed_before_a_crash(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    settings = await db_factory.new_settings()
    port = free_port()
    config = make_config(tmp_path / "hs", settings, test_ca,
                         extra={"listeners": {"client": {"bind": "127.0.0.1", "port": port}}})
    cfg_file = tmp_path / "hs.yaml"
    cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    log = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    held = {**os.environ, DELAY_ENV: "600"}
    try:
        async with gateway() as (gw, url), aiohttp.ClientSession() as s:
            # 1. The pass held back: events are committed (200s) and the server is killed.
            with server_process(cfg_file, log, env=held) as proc:
                await wait_ready(s, f"{base}/_matrix/client/versions", proc)
                alice = await register(s, base, "alice")
                bob = await register(s, base, "bob")
                await call(s, base, "POST", f"{V3}/pushers/set", alice, pusher(url, "key-1"))
                room = (await call(s, base, "POST", f"{V3}/createRoom", alice, {"preset": "public_chat"}))["room_id"]
                await call(s, base, "POST", f"{V3}/join/{room}", bob, {})
                sent = []
                for i in range(MESSAGES):
                    content: dict[str, Any] = {"msgtype": "m.text", "body": f"message {i}"}
                    if i == 0:
                        content["m.mentions"] = {"user_ids": [f"@alice:{config.server_name}"]}
                    reply = await call(s, base, "PUT", f"{V3}/rooms/{room}/send/m.room.message/t{i}", bob, content)
                    sent.append(reply["event_id"])
                assert await unread(s, base, alice, room) == (0, 0)  # not evaluated yet
                proc.kill()
                assert await wait_exit(proc) == -9
            assert gw.received == []

            # 2. Restarted (no delay): the pass resumes from its cursor.
            with server_process(cfg_file, log) as proc:
                await wait_ready(s, f"{base}/_matrix/client/versions", proc)
                deadline = time.monotonic() + 30
                while (await unread(s, base, alice, room)) != (MESSAGES, 1) or len(gw.received) < MESSAGES:
                    assert time.monotonic() < deadline, (await unread(s, base, alice, room), gw.received)
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)  # and nothing more
                assert [n["event_id"] for n in gw.received] == sent
                # One batch after the restart: each push counts all three.
                assert [n["counts"]["unread"] for n in gw.received] == [MESSAGES] * MESSAGES
                assert gw.problems == []
                assert await unread(s, base, bob, room) == (0, 0)  # the sender's own events
    except BaseException:
        print(f"--- server log tail ({log}) ---\n{tail(log)}")
        raise
