"""Join time over federation and message delivery latency, ours vs Synapse, on one machine.

Starts two Synapse processes (the interop suite's cached venv, same config) and two of our
servers (in-process, SQLite) on loopback, then for each pair (joining server / resident
server) measures:

- join time: the client's ``POST /join/{room}`` round trip for a v12 public room on the
  other server (make_join + send_join + state), median of ``--rounds`` fresh rooms;
- delivery latency: from the sender's ``PUT /send`` to the message appearing in the
  receiver's long-polling ``/sync`` on the other server, median and p90 of ``--messages``.

Run: ``.venv/bin/python bench/bench_interop.py [--rounds 5] [--messages 20]``. Figures only;
never part of the pass/fail suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from homeserver.server import RunningServer, start_server
from tests.interop.client import MatrixClient, bodies
from tests.interop.synapse import SynapseServer, ensure_synapse_venv, installed_version
from tests.servers import make_config

VERSION = "12"


class Endpoint:
    def __init__(self, label: str, server_name: str, client_url: str) -> None:
        self.label = label
        self.server_name = server_name
        self.client_url = client_url


async def user(http: aiohttp.ClientSession, ep: Endpoint) -> MatrixClient:
    c = MatrixClient(http, ep.client_url)
    await c.register()
    return c


async def join_times(http: aiohttp.ClientSession, joiner: Endpoint, resident: Endpoint, rounds: int) -> list[float]:
    owner = await user(http, resident)
    guest = await user(http, joiner)
    times = []
    for _ in range(rounds):
        room_id = await owner.create_room(VERSION)
        t0 = time.perf_counter()
        await guest.join(room_id, [resident.server_name])
        times.append(time.perf_counter() - t0)
    return times


async def latencies(sender: MatrixClient, receiver: MatrixClient, room_id: str, messages: int) -> list[float]:
    out = []
    await receiver.sync(timeout_ms=0)
    for i in range(messages):
        text = f"ping {i} {time.monotonic_ns()}"

        async def arrive(text: str = text) -> float:
            while text not in bodies(receiver.timelines.get(room_id, [])):
                await receiver.sync(timeout_ms=30000)
            return time.perf_counter()

        waiter = asyncio.create_task(arrive())
        await asyncio.sleep(0.05)  # the receiver's /sync is parked before we send
        t0 = time.perf_counter()
        await sender.send_text(room_id, text)
        out.append(await asyncio.wait_for(waiter, 60) - t0)
    return out


def ms(values: list[float]) -> str:
    med = statistics.median(values) * 1000
    p90 = sorted(values)[max(0, math.ceil(len(values) * 0.9) - 1)] * 1000  # nearest rank
    return f"median {med:7.1f} ms   p90 {p90:7.1f} ms"


async def run(rounds: int, messages: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_interop_"))
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    python = await asyncio.to_thread(ensure_synapse_venv)
    version = await asyncio.to_thread(installed_version, python)
    synapses = [SynapseServer(python, tmp / f"synapse{i}", ca) for i in (1, 2)]
    ours: list[RunningServer] = []
    try:
        for s in synapses:
            await asyncio.to_thread(s.start)
        for label in ("a", "b"):
            cfg = make_config(tmp / label, {"engine": "sqlite", "path": str(tmp / f"{label}.sqlite")}, ca)
            ours.append(await start_server(cfg))
        o1, o2 = (Endpoint(f"ours-{i}", s.services.config.server_name, f"http://127.0.0.1:{s.client_port}")
                  for i, s in enumerate(ours, 1))
        s1, s2 = (Endpoint(f"synapse-{i}", s.server_name, s.client_url) for i, s in enumerate(synapses, 1))
        pairs = [(o2, o1), (o2, s1), (s2, o1), (s2, s1)]
        print(f"Synapse {version} vs ours; room version {VERSION}; {rounds} joins, {messages} messages per pair")
        async with aiohttp.ClientSession() as http:
            print("join time over federation (joining server <- resident server)")
            for joiner, resident in pairs:
                t = await join_times(http, joiner, resident, rounds)
                print(f"  {joiner.label:>9} <- {resident.label:<9}  {ms(t)}")
            print("message delivery latency, send -> receiver's /sync (sender -> receiver)")
            for joiner, resident in pairs:
                r_user, j_user = await user(http, resident), await user(http, joiner)
                room_id = await r_user.create_room(VERSION)
                await j_user.join(room_id, [resident.server_name])
                await r_user.wait_for_membership(room_id, j_user.user_id, "join")
                for snd, rcv, s_ep, r_ep in ((r_user, j_user, resident, joiner), (j_user, r_user, joiner, resident)):
                    lat = await latencies(snd, rcv, room_id, messages)
                    print(f"  {s_ep.label:>9} -> {r_ep.label:<9}  {ms(lat)}")
    finally:
        for srv in ours:
            await srv.stop()
        for s in synapses:
            with contextlib.suppress(Exception):
                s.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--messages", type=int, default=20)
    args = p.parse_args()
    asyncio.run(run(args.rounds, args.messages))


if __name__ == "__main__":
    main()
