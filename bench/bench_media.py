"""Benchmark of the media repository on loopback: a 50 MB upload (POST /_matrix/media/v3/upload,
streamed from the client in 1 MiB chunks) and its authenticated download, against a server
process (SQLite), with the server's RSS sampled every 10 ms during both. For comparison, the
loopback limit: the same bytes posted to and fetched from a bare aiohttp server (another
process) that only discards or streams them.

Prints MB/s (10^6 bytes per second; best of ``rounds``) for each, and the server process's
RSS growth above its level before the first large transfer (must stay under 20 MB: uploads
are streamed to disk, downloads streamed from it).

Run: ``.venv/bin/python bench/bench_media.py [megabytes] [rounds]`` (default 50 3)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from homeserver.crypto.tls import generate_ca
from tests.servers import free_port, make_config

MEGABYTES = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "--sink" else 50
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] != "--sink" else 3
CHUNK = 1024 * 1024
BLOCK = os.urandom(CHUNK)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def body(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = BLOCK[: min(CHUNK, total - sent)]
        sent += len(piece)
        yield piece


# ---------------------------------------------------------------------- the loopback sink


def run_sink(port: int, total: int) -> None:
    """A bare aiohttp server: POST reads and discards the body, GET streams ``total`` bytes."""

    async def post(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            n += len(chunk)
        return web.json_response({"n": n})

    async def get(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(total)})
        await resp.prepare(request)
        async for piece in body(total):
            await resp.write(piece)
        return resp

    app = web.Application()
    app.add_routes([web.post("/x", post), web.get("/x", get)])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# ---------------------------------------------------------------------- measuring


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def wait_up(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        try:
            async with session.get(url) as r:
                if r.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


async def transfer(session: aiohttp.ClientSession, upload_url: str, download_url: str, total: int,
                   headers: dict[str, str]) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    async with session.post(upload_url, data=body(total),
                            headers={**headers, "Content-Length": str(total),
                                     "Content-Type": "application/octet-stream"}) as r:
        assert r.status == 200, await r.text()
        answer = await r.json()
    up = time.perf_counter() - t0
    uri = answer.get("content_uri", "")
    t0 = time.perf_counter()
    n = 0
    url = download_url.format(media_id=uri.rsplit("/", 1)[-1]) if uri else download_url
    async with session.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_chunked(CHUNK):
            n += len(chunk)
    assert n == total, n
    return up, time.perf_counter() - t0, uri


async def main(tmp: Path) -> None:
    total = MEGABYTES * 1_000_000
    ca = (tmp / "ca.crt", tmp / "ca.key")
    generate_ca(*ca)
    port = free_port()
    config = make_config(tmp / "hs", {"engine": "sqlite", "path": str(tmp / "hs.db")}, ca, extra={
        "logging": {"level": "ERROR"},
        "listeners": {"client": {"bind": "127.0.0.1", "port": port}, "metrics": {"enabled": False}},
        "media": {"max_upload_size": total + CHUNK, "upload_rate_limit": {"per_second": 100.0, "burst_count": 100}},
    })
    cfg_file = tmp / "hs.yaml"
    cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    sink_port = free_port()
    log = open(tmp / "server.log", "wb")  # noqa: ASYNC230 - before timing
    server = subprocess.Popen([sys.executable, "-m", "homeserver", "run", "-c", str(cfg_file)],  # noqa: ASYNC220
                              stdout=subprocess.DEVNULL, stderr=log)
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(sink_port), str(total)])  # noqa: ASYNC220
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            await wait_up(s, f"{base}/_matrix/client/versions")
            await wait_up(s, f"http://127.0.0.1:{sink_port}/nothing")
            reg = {"username": "bench" + secrets.token_hex(3), "password": "correct horse battery",
                   "auth": {"type": "m.login.dummy"}}
            async with s.post(f"{base}/_matrix/client/v3/register", json=reg) as r:
                token = (await r.json())["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            name = config.server_name
            upload_url = f"{base}/_matrix/media/v3/upload?filename=big.bin"
            download_url = f"{base}/_matrix/client/v1/media/download/{name}/{{media_id}}"
            await transfer(s, upload_url, download_url, CHUNK, auth)  # warm up: imports, pools
            before = rss_mb(server.pid)
            ups, downs = [], []
            with RssSampler(server.pid) as sampler:
                for _ in range(ROUNDS):
                    up, down, _ = await transfer(s, upload_url, download_url, total, auth)
                    ups.append(up)
                    downs.append(down)
            sink_url = f"http://127.0.0.1:{sink_port}/x"
            raw_ups, raw_downs = [], []
            for _ in range(ROUNDS):
                up, down, _ = await transfer(s, sink_url, sink_url, total, {})
                raw_ups.append(up)
                raw_downs.append(down)

        def mbs(seconds: list[float]) -> float:
            return total / 1e6 / min(seconds)

        print(f"{MEGABYTES} MB, best of {ROUNDS}, loopback, server on SQLite")
        print(f"upload:   {mbs(ups):7.0f} MB/s   (loopback limit, bare aiohttp: {mbs(raw_ups):.0f} MB/s)")
        print(f"download: {mbs(downs):7.0f} MB/s   (loopback limit, bare aiohttp: {mbs(raw_downs):.0f} MB/s)")
        growth = sampler.peak - before
        print(f"server RSS: {before:.0f} MB before, peak {sampler.peak:.0f} MB during: growth {growth:.1f} MB "
              f"({'OK' if growth < 20 else 'OVER'} the 20 MB bound)")
    finally:
        for proc in (server, sink):
            proc.terminate()
            proc.wait(10)
        log.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        run_sink(int(sys.argv[2]), int(sys.argv[3]))
    else:
        with tempfile.TemporaryDirectory() as d:
            asyncio.run(main(Path(d)))
