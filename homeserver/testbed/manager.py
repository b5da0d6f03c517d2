"""The local testbed: N homeservers as separate processes on loopback.

Each server has its own directory under the testbed directory (signing key, certificate
from the testbed CA, config, SQLite database or its own PostgreSQL database, log file) and
is named ``localhost:FEDERATION_PORT``, so the servers find each other by the port in their
names and trust each other's certificates through the CA. Ports are chosen once and kept
in the state file: a restarted server keeps its name, keys and data.

A process is signalled only after checking that its command line still names the
server's config file, so a recycled PID is never signalled. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from homeserver.config import ConfigError
from homeserver.storage.pg_admin import create_database, drop_database
from homeserver.testbed.layout import LOG_FILE, ServerSpec, write_server_files
from homeserver.testbed.state import ServerEntry, TestbedError, TestbedState

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
HEALTH_TIMEOUT_SECONDS = 2.0

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


# ---------------------------------------------------------------------- databases


def _database_name(directory: Path, name: str) -> str:
    # One database per server and testbed directory: a stable name from the directory.
    import hashlib

    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:8]
    return f"testbed_{digest}_{name}"


# ---------------------------------------------------------------------- processes


def _config_path(state: TestbedState, entry: ServerEntry) -> Path:
    return (state.directory / entry.config).resolve()


def is_running(state: TestbedState, entry: ServerEntry) -> bool:
    """Is the recorded PID alive and still our server (its command line names the config)?"""
    if entry.pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{entry.pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{entry.pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie: exited, not yet reaped
        return False
    return str(_config_path(state, entry)).encode() in cmdline


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=HEALTH_TIMEOUT_SECONDS) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_server(state: TestbedState, entry: ServerEntry, log_level: str | None = None) -> None:
    """Start the server process (detached) and wait until /health answers."""
    if not entry.managed:
        raise TestbedError(f"{entry.name} is not a local testbed server")
    if is_running(state, entry):
        return
    config = _config_path(state, entry)
    log_path = state.directory / (entry.log or f"{entry.name}/{LOG_FILE}")
    cmd = [sys.executable, "-m", "homeserver", "run", "-c", str(config)]
    if log_level:
        cmd += ["--log-level", log_level]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=config.parent, start_new_session=True,  # outlives the CLI; not in its signal group
        )
    entry.pid = proc.pid
    state.save()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestbedError(
                f"{entry.name} exited with status {proc.returncode}; log {log_path}:\n{_tail(log_path)}"
            )
        if _health(entry.client_url):
            return
        time.sleep(0.1)
    raise TestbedError(f"{entry.name} did not answer /health within {START_TIMEOUT_SECONDS:.0f}s; log {log_path}")


def stop_server(state: TestbedState, entry: ServerEntry, *, kill: bool = False) -> bool:
    """SIGTERM (graceful) or SIGKILL the server; wait until it is gone. False if it was
    not running."""
    if not entry.managed:
        raise TestbedError(f"{entry.name} is not a local testbed server")
    if not is_running(state, entry):
        entry.pid = None
        state.save()
        return False
    assert entry.pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(entry.pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while is_running(state, entry):
        if time.monotonic() >= deadline:
            # Graceful shutdown is bounded too: past the deadline the process is killed.
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry.pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        time.sleep(0.05)
    entry.pid = None
    state.save()
    return True


# ---------------------------------------------------------------------- commands


def up(
    directory: Path, servers: int, *, postgres: str | None = None, log_level: str | None = None,
    say: Say = _quiet,
) -> TestbedState:
    """Create the servers that do not exist yet (up to ``servers``), start every server
    that is not running, and return the state."""
    state = TestbedState.load(directory, missing_ok=True)
    if postgres and state.postgres_admin_dsn and postgres != state.postgres_admin_dsn:
        raise TestbedError("this testbed uses another PostgreSQL server; `down --purge` it first")
    if postgres:
        state.postgres_admin_dsn = postgres
    taken = {int(u.rsplit(":", 1)[1]) for e in state.servers
             for u in (e.client_url, e.federation_url, e.metrics_url)}
    for index in range(len(state.servers) + 1, servers + 1):
        name = f"hs{index}"
        client_port, fed_port, metrics_port = _free_ports(3, taken)
        taken.update((client_port, fed_port, metrics_port))
        database: dict[str, str] = {"engine": "sqlite"}
        if state.postgres_admin_dsn:
            dsn = asyncio.run(create_database(state.postgres_admin_dsn, _database_name(directory, name)))
            database = {"engine": "postgres", "dsn": dsn}
        spec = ServerSpec(
            name=name, server_name=f"localhost:{fed_port}", cert_hosts=("localhost", "127.0.0.1"),
            bind="127.0.0.1", client_port=client_port, federation_port=fed_port,
            metrics_port=metrics_port, database=database,
        )
        try:
            write_server_files(directory, spec, overwrite_config=True)
        except ConfigError as e:  # pragma: no cover - the generator writes valid configs
            raise TestbedError(f"generated an invalid config for {name}: {e}") from None
        state.servers.append(ServerEntry(
            name=name, server_name=spec.server_name,
            client_url=f"http://127.0.0.1:{client_port}",
            federation_url=f"https://127.0.0.1:{fed_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}",
            config=f"{name}/homeserver.yaml", database=database, log=f"{name}/{LOG_FILE}",
        ))
        state.save()
        say(f"created {name} ({spec.server_name})")
    if not state.servers:
        raise TestbedError("--servers must be at least 1")
    for entry in state.servers:
        if entry.managed and not is_running(state, entry):
            say(f"starting {entry.name}")
            start_server(state, entry, log_level)
    return state


def down(directory: Path, *, purge: bool = False, say: Say = _quiet) -> TestbedState:
    """Stop every server (SIGTERM, bounded); with ``purge`` also drop their PostgreSQL
    databases and forget them (the directory's files are left for inspection)."""
    state = TestbedState.load(directory)
    for entry in state.servers:
        if entry.managed and stop_server(state, entry):
            say(f"stopped {entry.name}")
    if purge:
        if state.postgres_admin_dsn:
            for entry in state.servers:
                if entry.database.get("engine") == "postgres":
                    name = entry.database["dsn"].split("?", 1)[0].rsplit("/", 1)[1]
                    asyncio.run(drop_database(state.postgres_admin_dsn, name))
        state.servers = []
        state.postgres_admin_dsn = None
        state.save()
    return state


def status_rows(state: TestbedState) -> list[list[str]]:
    rows = [["NAME", "SERVER NAME", "STATE", "CLIENT URL", "FEDERATION URL", "METRICS URL"]]
    for e in state.servers:
        if e.managed:
            running = "running" if is_running(state, e) else "stopped"
            if running == "running" and not _health(e.client_url):
                running = "unhealthy"
        else:
            running = "healthy" if _health(e.client_url) else "unreachable"
        rows.append([e.name, e.server_name, running, e.client_url, e.federation_url, e.metrics_url + "/metrics"])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
