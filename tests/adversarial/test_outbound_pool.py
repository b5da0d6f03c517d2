"""Key fetches cannot exhaust the outbound federation pool (issue 17, finding 5).

300 unauthenticated requests name 300 silent origins (loopback sockets that complete the
TCP handshake and never answer): each makes the server fetch that origin's key, and each
fetch holds a connection until its timeout. Key fetches have a small pool of their own,
so delivery to a real peer, through the federation pool, stays as fast as without them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp

from homeserver.crypto.keys import generate_key_line, parse_key_file
from homeserver.crypto.xmatrix import authorization_header
from homeserver.server import RunningServer
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.outbound_receiver import Receiver, eventually
from tests.servers import make_config, running_server

ORIGINS = 300
KEY_FETCH_TIMEOUT = 8.0


@contextmanager
def silent_origins(count: int) -> Iterator[list[str]]:
    """``count`` server names on loopback whose sockets listen and never accept: the
    kernel completes the TCP handshake, then nothing ever answers."""
    with ExitStack() as stack:
        names = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            names.append(f"127.0.0.1:{s.getsockname()[1]}")
        yield names


async def probe(http: aiohttp.ClientSession, server: RunningServer, origin: str) -> int:
    destination = server.services.config.server_name
    uri = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ab"
    header = authorization_header(parse_key_file(generate_key_line()), origin, destination, "GET", uri)
    port = server.services.config.listeners.federation.port
    async with http.get(f"https://127.0.0.1:{port}{uri}", headers={"Authorization": header}, ssl=False) as r:
        return r.status


async def delivery_seconds(room: LocalRoom, peer: Receiver, body: str) -> float:
    started = time.monotonic()
    event = await room.message(body)
    await peer.wait_for(lambda r: event.event_id in r.pdu_ids(), timeout=20.0)
    return time.monotonic() - started


async def test_silent_origins_do_not_slow_delivery_to_a_real_peer(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    config = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra={
        "federation": {"key_fetch_timeout": KEY_FETCH_TIMEOUT, "connect_timeout": KEY_FETCH_TIMEOUT,
                       "request_timeout": 10.0},
        # The attack of finding 5 as it was: every silent origin's key fetch in flight at once
        # (finding 2's cap on concurrent fetches would otherwise hide what the separate key
        # pool guarantees).
        "federation_limits": {"max_concurrent_key_fetches": ORIGINS},
    })
    # Each delivery measured goes to a peer not yet connected to (an idle keep-alive
    # connection would be reused without waiting for a pool slot): one before, one during.
    peer, peer2 = Receiver(tmp_path / "peer", test_ca), Receiver(tmp_path / "peer2", test_ca)
    await peer.start()
    await peer2.start()
    try:
        with silent_origins(ORIGINS) as origins:
            async with running_server(config) as a, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=25)
            ) as http:
                room = await LocalRoom(a.services).create()
                await room.join_remote(f"@bob:{peer.server_name}")
                room2 = await LocalRoom(a.services).create()
                await room2.join_remote(f"@carol:{peer2.server_name}")
                baseline = await delivery_seconds(room, peer, "before")

                probes = [asyncio.create_task(probe(http, a, o)) for o in origins]
                try:
                    keyring = a.services.keyring
                    await eventually(lambda: keyring.fetches >= ORIGINS // 2, timeout=10.0)
                    during = await delivery_seconds(room2, peer2, "during")
                    # the federation pool holds no connection to a silent origin
                    held = a.services.federation_client.open_connections()
                    statuses = await asyncio.gather(*probes)
                finally:
                    for p in probes:
                        p.cancel()
                    await asyncio.gather(*probes, return_exceptions=True)
        assert set(statuses) == {401}
        # Without a pool of its own, the key fetches held every outbound slot until their
        # timeout, and this delivery waited about KEY_FETCH_TIMEOUT seconds.
        assert during < max(2.0, 10 * baseline), (baseline, during)
        assert held <= 2, held  # the peer's connection(s) only
    finally:
        await peer.close()
        await peer2.close()
