"""Benchmark of remote media over federation on loopback: two server processes (SQLite
each, real HTTPS federation). A user of A uploads ``megabytes`` MB; a user of B downloads it
through B's ``/_matrix/client/v1/media/download/{A}/{id}``: the first time B fetches it from
A's ``/_matrix/federation/v1/media/download`` (multipart, streamed into B's store as it
arrives) while serving nothing until it is whole; the second time B serves its cached copy.

Prints, best of ``rounds`` (a new upload each round): MB/s of the first (federated) and of
the cached download, and the RSS growth of each process above its level before the first
large transfer (both must stay under 20 MB: every hop is streamed).

Run: ``.venv/bin/python bench/bench_media_federation.py [megabytes] [rounds]`` (default 50 3)
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_media import CHUNK, body, rss_mb, wait_up  # one copy of the media bench's helpers
from homeserver.config import Config
from homeserver.crypto.tls import generate_ca
from tests.servers import free_port, make_config

MEGABYTES = int(sys.argv[1]) if len(sys.argv) > 1 else 50
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3


class RssSampler:
    """The peak RSS of some processes, sampled every 10 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_mb(pid))
            await asyncio.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()



async def register(session: aiohttp.ClientSession, base: str) -> dict[str, str]:
    reg = {"username": "bench" + secrets.token_hex(3), "password": "correct horse battery",
           "auth": {"type": "m.login.dummy"}}
    async with session.post(f"{base}/_matrix/client/v3/register", json=reg) as r:
        return {"Authorization": f"Bearer {(await r.json())['access_token']}"}


async def upload(session: aiohttp.ClientSession, base: str, auth: dict[str, str], total: int) -> str:
    async with session.post(f"{base}/_matrix/media/v3/upload?filename=big.bin", data=body(total),
                            headers={**auth, "Content-Length": str(total),
                                     "Content-Type": "application/octet-stream"}) as r:
        assert r.status == 200, await r.text()
        uri: str = (await r.json())["content_uri"]
    return uri[len("mxc://"):]


async def download(session: aiohttp.ClientSession, url: str, auth: dict[str, str], total: int) -> float:
    t0 = time.perf_counter()
    n = 0
    async with session.get(url, headers=auth) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_chunked(CHUNK):
            n += len(chunk)
    assert n == total, n
    return time.perf_counter() - t0


def start(tmp: Path, config: Config, label: str) -> subprocess.Popen[bytes]:
    cfg_file = tmp / f"{label}.yaml"
    cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    log = open(tmp / f"{label}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "homeserver", "run", "-c", str(cfg_file)],
                            stdout=subprocess.DEVNULL, stderr=log)


async def main(tmp: Path) -> None:
    total = MEGABYTES * 1_000_000
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    ports = {"a": free_port(), "b": free_port()}
    configs = {
        label: make_config(tmp / label, {"engine": "sqlite", "path": str(tmp / f"{label}.db")}, ca, extra={
            "logging": {"level": "ERROR"},
            "listeners": {"client": {"bind": "127.0.0.1", "port": ports[label]}, "metrics": {"enabled": False}},
            "media": {"max_upload_size": total + CHUNK,
                      "upload_rate_limit": {"per_second": 100.0, "burst_count": 100}},
        })
        for label in ("a", "b")
    }
    procs = {label: start(tmp, configs[label], label) for label in ("a", "b")}
    try:
        base = {label: f"http://127.0.0.1:{ports[label]}" for label in ("a", "b")}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            for label in ("a", "b"):
                await wait_up(s, f"{base[label]}/_matrix/client/versions")
            alice, bob = await register(s, base["a"]), await register(s, base["b"])
            url = base["b"] + "/_matrix/client/v1/media/download/{ref}"
            warm = await upload(s, base["a"], alice, CHUNK)  # imports, pools, keys
            await download(s, url.format(ref=warm), bob, CHUNK)
            before = {label: rss_mb(p.pid) for label, p in procs.items()}
            first, cached = [], []
            with RssSampler([p.pid for p in procs.values()]) as sampler:
                for _ in range(ROUNDS):
                    ref = await upload(s, base["a"], alice, total)
                    first.append(await download(s, url.format(ref=ref), bob, total))
                    cached.append(await download(s, url.format(ref=ref), bob, total))

        def mbs(seconds: list[float]) -> float:
            return total / 1e6 / min(seconds)

        print(f"{MEGABYTES} MB, best of {ROUNDS}, loopback, two servers on SQLite, HTTPS federation")
        print(f"B's client, first download (B fetches from A over federation): {mbs(first):7.0f} MB/s")
        print(f"B's client, second download (B's cache):                       {mbs(cached):7.0f} MB/s")
        for label, proc in procs.items():
            growth = sampler.peak[proc.pid] - before[label]
            print(f"server {label.upper()} RSS: {before[label]:.0f} MB before, peak {sampler.peak[proc.pid]:.0f} MB: "
                  f"growth {growth:.1f} MB ({'OK' if growth < 20 else 'OVER'} the 20 MB bound)")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(Path(d)))
