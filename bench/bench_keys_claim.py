"""Benchmark of ``POST /keys/claim`` across two servers on loopback (SQLite each, real HTTPS
federation): a user on server A claims one-time keys of a user on server B, so each claim
is A's client API, A's federation request to B's ``/user/keys/claim`` and B's atomic take of
one key. Also the same claim of a local user's keys on B, for comparison. Prints the median
and p95 of each.

Run: ``.venv/bin/python bench/bench_keys_claim.py [claims]`` (default 100)
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from homeserver.server import RunningServer
from tests.clients import base_url, nio_user
from tests.servers import make_config, running_server

CLAIMS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
V3 = "/_matrix/client/v3"


def _p95(times: list[float]) -> float:
    return times[min(len(times) - 1, round(0.95 * len(times)) - 1)]


async def main(tmp: Path) -> None:
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    cfg_a = make_config(tmp / "a", {"engine": "sqlite", "path": str(tmp / "a.db")}, ca)
    cfg_b = make_config(tmp / "b", {"engine": "sqlite", "path": str(tmp / "b.db")}, ca)
    async with running_server(cfg_a) as a, running_server(cfg_b) as b, \
            nio_user(a, "alice") as alice, nio_user(b, "bob") as bob, nio_user(b, "carol") as carol, \
            aiohttp.ClientSession() as http:

        async def call(server: RunningServer, token: str, path: str, body: Any) -> Any:
            async with http.post(base_url(server) + path, json=body,
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        # Bob uploads enough one-time keys for every claim (in uploads of 50).
        total = 2 * CLAIMS + 2
        for start in range(0, total, 50):
            keys = {f"signed_curve25519:K{i:06d}": {"key": f"k{i:043d}", "signatures": {}}
                    for i in range(start, min(total, start + 50))}
            await call(b, bob.access_token, f"{V3}/keys/upload", {"one_time_keys": keys})
        claim = {"one_time_keys": {bob.user_id: {bob.device_id: "signed_curve25519"}}}

        async def one(server: RunningServer, token: str) -> float:
            started = time.perf_counter()
            body = await call(server, token, f"{V3}/keys/claim", claim)
            elapsed = (time.perf_counter() - started) * 1000
            assert body["one_time_keys"][bob.user_id][bob.device_id], body
            return elapsed

        cold = await one(a, alice.access_token)  # key fetches, TLS handshakes
        remote = sorted([await one(a, alice.access_token) for _ in range(CLAIMS)])
        await one(b, carol.access_token)
        local = sorted([await one(b, carol.access_token) for _ in range(CLAIMS)])
        print(f"/keys/claim of a remote user's key (A -> B over federation), {CLAIMS} claims: cold {cold:.0f} ms;"
              f" median {statistics.median(remote):.1f} ms, p95 {_p95(remote):.1f} ms, max {remote[-1]:.1f} ms")
        print(f"/keys/claim of a local user's key (on B), {CLAIMS} claims:"
              f" median {statistics.median(local):.1f} ms, p95 {_p95(local):.1f} ms, max {local[-1]:.1f} ms")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d)))
