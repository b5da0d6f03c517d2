"""A destination that accepts connections and never answers: requests time out, the
sockets held for it stay within the per-host limit (and drop to zero between retries),
and other destinations are served meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

from homeserver.net.client import split_server_name
from tests.conftest import DatabaseFactory
from tests.local_room import LocalRoom
from tests.outbound_receiver import Blackhole, Receiver, eventually
from tests.servers import make_config, running_server

PER_HOST = 2


async def test_blackholed_destination_is_bounded(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    b = Receiver(tmp_path / "b", test_ca)
    holes = [Blackhole() for _ in range(3)]
    await b.start()
    for h in holes:
        await h.start()
    cfg = make_config(tmp_path / "a", await db_factory.new_settings(), test_ca, extra={
        "federation": {"connect_timeout": 0.5, "request_timeout": 1.0, "max_connections_per_host": PER_HOST,
                       "max_connections": 20},
        "outbound": {"backoff_initial_seconds": 0.3, "backoff_ceiling_seconds": 0.6, "send_timeout": 1.0},
    })
    try:
        async with running_server(cfg) as a:
            client = a.services.federation_client
            room = await LocalRoom(a.services).create()
            await room.join_remote(f"@bob:{b.server_name}")
            for i, h in enumerate(holes):
                await room.join_remote(f"@h{i}:{h.server_name}")
            msgs = [await room.message(f"m{i}") for i in range(5)]
            # b is served while three destinations hang
            await b.wait_for(lambda r: len(r.pdu_ids()) == 5)
            assert b.pdu_ids() == [m.event_id for m in msgs]
            # Other requests to a hole (as the inbound side makes) share the per-host limit.
            host, port = split_server_name(holes[0].server_name)
            extra = [asyncio.create_task(client.get_json(holes[0].server_name, "/_matrix/federation/v1/x"))
                     for _ in range(6)]
            peak_client = 0
            registry = a.services.metrics.registry

            def failed() -> float:
                return sum(
                    registry.get_sample_value("hs_outbound_transactions_total",
                                              {"destination": h.server_name, "result": "failed"}) or 0
                    for h in holes
                )

            def sample() -> bool:
                nonlocal peak_client
                peak_client = max(peak_client, client.open_connections(f"https://{host}:{port}"))
                assert client.open_connections() <= 20
                return failed() >= 6  # two timed-out attempts per hole at least

            await eventually(sample)
            results = await asyncio.gather(*extra, return_exceptions=True)
            assert all(isinstance(r, Exception) for r in results)
            assert 1 <= peak_client <= PER_HOST
            assert all(h.peak <= PER_HOST for h in holes), [h.peak for h in holes]
            assert (registry.get_sample_value("hs_outbound_request_failures_total", {"reason": "timeout"}) or 0) >= 6
            # Between retries nothing is held for a hole: its failed connections were closed.
            await eventually(lambda: not holes[0].open and not client.open_connections(f"https://{host}:{port}"))
            assert await a.services.sender.queue_depth(holes[0].server_name) == (5, 0)
        # stopping the server left nothing open towards the holes
        await eventually(lambda: sum(h.open for h in holes) == 0, timeout=10)
    finally:
        for h in holes:
            await h.close()
        await b.close()
