"""A homeserver in its own process for the attack tests, so that its memory can be read
from /proc without the test's own allocations in it."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import yaml

from homeserver.config import Config

START_TIMEOUT = 30.0


def write_config(config: Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    return path


@contextmanager
def server_process(
    cfg_file: Path,
    log: Path,
    preexec_fn: Callable[[], None] | None = None,
    *,
    program: Sequence[str] = (sys.executable, "-m", "homeserver"),
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m homeserver run`` with stderr appended to ``log``; always killed and reaped.
    ``preexec_fn`` runs in the child before exec (e.g. to lower its open-file limit);
    ``program`` replaces ``python -m homeserver`` (e.g. an installed ``homeserver`` script),
    ``cwd`` and ``env`` are the child's (default: this process's)."""
    with log.open("ab") as log_file:
        proc = subprocess.Popen([*program, "run", "-c", str(cfg_file)], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=log_file, preexec_fn=preexec_fn)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


async def wait_ready(s: aiohttp.ClientSession, health_url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            async with s.get(health_url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the server did not answer within the start timeout")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


class Probe:
    """While running: samples the server's RSS and times GET /health, every ``interval``."""

    def __init__(self, pid: int, s: aiohttp.ClientSession, health_url: str, interval: float = 0.05) -> None:
        self.pid = pid
        self.s = s
        self.health_url = health_url
        self.interval = interval
        self.peak_rss = rss_bytes(pid)
        self.health_seconds: list[float] = []
        self.health_statuses: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def _rss(self) -> None:
        while True:
            self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
            await asyncio.sleep(self.interval / 2)

    async def _health(self) -> None:
        while True:
            started = time.monotonic()
            try:
                async with self.s.get(self.health_url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                    await r.read()
                    self.health_statuses.append(r.status)
            except (aiohttp.ClientError, TimeoutError):
                self.health_statuses.append(0)
            self.health_seconds.append(time.monotonic() - started)
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Probe:
        self._tasks = [asyncio.create_task(self._rss()), asyncio.create_task(self._health())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def tail(log: Path, lines: int = 40) -> str:
    if not log.exists():
        return "(no server log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
