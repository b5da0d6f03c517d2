"""Slowloris against a real server process (``python -m homeserver run``), on both engines
(issue 17, finding 7).

The server starts with a soft open-file limit of 1,024 (a common default) and must raise
it to the hard limit. Then 2,000 connections are opened to the client listener in batches:
half send the start of a request and trickle a byte now and then, half send nothing. Before
the fix they were never closed, the server ran out of file descriptors at 1,024, ``/health``
timed out and the log filled with accept() tracebacks. Now, throughout the attack, a fresh
connection gets ``/health`` answered in under 100 ms; the server's open file descriptors
stay within its connection cap plus the accept backlog and a few; every attacking
connection is closed by the server once the header timeout has passed (a JSON 408 for
those that had sent part of a request); its RSS grows by less than 50 MB; and the log
stays a handful of lines.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from homeserver.connections import BACKLOG
from tests.conftest import DatabaseFactory
from tests.procs import server_process
from tests.servers import free_port, make_config

ATTACK = 2000
BATCH = 100
CAP = 300
HEADER_TIMEOUT = 2.0
HEALTH_BUDGET_MS = 100.0
CHILD_SOFT_LIMIT = 1024
START_TIMEOUT = 30.0
PARTIAL = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: "


@contextmanager
def own_fd_limit(needed: int) -> Iterator[None]:
    """This test process needs a socket per attacking connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _lower_soft_limit() -> None:  # runs in the child before exec
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(CHILD_SOFT_LIMIT, soft), hard))


def get_health(port: int, timeout: float = 5.0) -> tuple[bytes, float]:
    """``GET /health`` on a fresh connection: the reply and the milliseconds it took."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply, (time.perf_counter() - started) * 1000


def health_ms(port: int) -> float:
    reply, ms = get_health(port)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    return ms


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {log.read_text()[-3000:]}"
        try:
            if get_health(port, timeout=1.0)[0].startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not answer within the start timeout")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def soft_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


def send_quietly(s: socket.socket, data: bytes) -> None:
    try:
        s.send(data)
    except OSError:
        pass  # closed by the server already


@dataclasses.dataclass
class Figures:
    latencies: list[float] = dataclasses.field(default_factory=list)  # /health, ms
    fds: list[int] = dataclasses.field(default_factory=list)  # the server's open fds
    rss: list[float] = dataclasses.field(default_factory=list)  # the server's RSS, MB
    replies: list[bytes] = dataclasses.field(default_factory=list)  # what attackers received
    still_open: int = 0  # attacking connections not closed by the server in time
    after: int = 0  # the server's open fds once the attack is over


def attack(port: int, pid: int) -> Figures:
    """Open the attacking connections, probing ``/health`` and the server's fds as it goes,
    trickle bytes for a second, then wait for the server to close them all."""
    figures = Figures()

    def probe() -> None:
        figures.latencies.append(health_ms(port))
        if os.environ.get("SLOWLORIS_TRACE"):
            print(f"{time.monotonic():.3f} {figures.latencies[-1]:.1f}")
        figures.fds.append(open_fds(pid))
        figures.rss.append(rss_mb(pid))

    attackers: list[socket.socket] = []
    for i in range(ATTACK):
        s = socket.socket()
        s.settimeout(5.0)
        s.connect(("127.0.0.1", port))
        if i % 2 == 0:
            send_quietly(s, PARTIAL)
        attackers.append(s)
        if (i + 1) % BATCH == 0:
            probe()
    last_opened = time.monotonic()
    # Trickle a byte on the partial requests: it must not keep them open.
    while time.monotonic() < last_opened + 1.0:
        for s in attackers[::2]:
            send_quietly(s, b"a")
        probe()
        time.sleep(0.1)

    # Every attacking connection is closed by the server once the header timeout has passed.
    by_fd = {s.fileno(): s for s in attackers}
    poller = select.poll()
    for fd, s in by_fd.items():
        s.setblocking(False)
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    deadline = last_opened + HEADER_TIMEOUT + 3.0
    while by_fd and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            s = by_fd[fd]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                figures.replies.append(data)
                continue
            poller.unregister(fd)
            del by_fd[fd]
        if len(figures.latencies) < 60:
            probe()
    figures.still_open = len(by_fd)
    for s in attackers:
        s.close()
    time.sleep(0.2)
    figures.after = open_fds(pid)
    probe()
    return figures


async def test_slowloris_of_2000_connections(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    settings = await db_factory.new_settings()
    port = free_port()
    config = make_config(tmp_path / "hs", settings, test_ca, extra={
        "logging": {"level": "INFO"},
        "listeners": {"client": {"bind": "127.0.0.1", "port": port, "max_connections": CAP,
                                 "header_timeout": HEADER_TIMEOUT, "keepalive_timeout": 5.0}},
    })
    cfg_file = tmp_path / "hs.yaml"
    cfg_file.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    log = tmp_path / "server.log"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    with own_fd_limit(ATTACK + 500), server_process(cfg_file, log, _lower_soft_limit) as proc:
        wait_ready(port, proc, log)
        # The server raised its soft limit from 1,024 to the hard limit.
        if hard != resource.RLIM_INFINITY:
            assert soft_fd_limit(proc.pid) == hard
        baseline = open_fds(proc.pid)
        rss_before = rss_mb(proc.pid)
        log_before = log.stat().st_size
        figures = attack(port, proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    latencies = figures.latencies
    print(f"\n{settings['engine']}: /health max {max(latencies):.1f} ms, median "
          f"{sorted(latencies)[len(latencies) // 2]:.1f} ms over {len(latencies)} probes; fds baseline "
          f"{baseline}, max {max(figures.fds)}, after {figures.after}; RSS {rss_before:.0f} MB, max "
          f"{max(figures.rss):.0f} MB; 408 replies {len(figures.replies)}; "
          f"log +{log.stat().st_size - log_before} bytes")
    assert figures.still_open == 0, f"{figures.still_open} attacking connections still open after the header timeout"
    assert max(latencies) < HEALTH_BUDGET_MS, sorted(latencies)[-5:]
    assert max(figures.fds) <= baseline + CAP + BACKLOG + 16, figures.fds
    assert figures.after <= baseline + 16
    assert max(figures.rss) - rss_before < 50, (rss_before, max(figures.rss))
    assert figures.replies
    assert all(r.startswith(b"HTTP/1.1 408") and b'"errcode"' in r for r in figures.replies)
    text = log.read_text()
    lines = text.splitlines()
    assert len(lines) <= 40, "\n".join(lines[-40:])
    assert len(text) < 32 * 1024
    assert "Traceback" not in text
    assert "raised the open-file limit" in text or hard <= CHILD_SOFT_LIMIT
