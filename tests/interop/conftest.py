"""Fixtures of the interop suite: real Synapse processes beside two of our servers, on loopback.

- ``synapse_python`` builds (once, cached under ``~/.cache/homeserver-interop``) the Synapse
  virtualenv; ``synapse`` is one Synapse process shared by the session, stopped at its end;
  ``fresh_synapse`` is a second one a single test may stop and start (scenario 6).
- ``ours`` gives two of our in-process servers (each test, on SQLite and on PostgreSQL via
  ``db_factory``) that trust the same test CA; ``OurServer.restart`` keeps the server name.
- When a test fails, the tail of the log of each Synapse it used is attached to its report.

The suite is marked ``interop`` and kept out of the default run; ``make interop`` runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from homeserver.config import Config
from homeserver.server import RunningServer, start_server
from tests.conftest import DatabaseFactory
from tests.interop.client import MatrixClient
from tests.interop.synapse import SynapseServer, ensure_synapse_venv, installed_version
from tests.servers import free_port, make_config

# Our outbound retries come quickly, so that a peer that returns is caught up within a test.
FAST: dict[str, Any] = {"outbound": {"backoff_initial_seconds": 0.2, "backoff_ceiling_seconds": 1.0}}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            if isinstance(value, SynapseServer):
                report.sections.append((f"synapse log ({name}, {value.server_name})", value.logs()))


@pytest.fixture(scope="session")
def synapse_python() -> Path:
    return ensure_synapse_venv()


@pytest.fixture(scope="session")
def synapse_version(synapse_python: Path) -> str:
    return installed_version(synapse_python)


@pytest.fixture(scope="session")
def synapse(
    synapse_python: Path, tmp_path_factory: pytest.TempPathFactory, test_ca: tuple[Path, Path]
) -> Iterator[SynapseServer]:
    server = SynapseServer(synapse_python, tmp_path_factory.mktemp("synapse"), test_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_synapse(synapse_python: Path, tmp_path: Path, test_ca: tuple[Path, Path]) -> Iterator[SynapseServer]:
    """A Synapse of this test alone (its log in the test's tmp dir), which the test may stop."""
    server = SynapseServer(synapse_python, tmp_path / "synapse", test_ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class OurServer:
    """One of our servers, restartable under the same name, port and database."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._server: RunningServer | None = None

    @property
    def server(self) -> RunningServer:
        assert self._server is not None, "server is stopped"
        return self._server

    @property
    def name(self) -> str:
        return self.config.server_name

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.server.client_port}"

    async def start(self) -> None:
        assert self._server is None
        self._server = await start_server(self.config)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def ours(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[OurServer, OurServer]]:
    servers: list[OurServer] = []
    try:
        for label in ("a", "b"):
            # The client listener keeps one port across restarts, so clients can carry on.
            extra = {**FAST, "listeners": {"client": {"bind": "127.0.0.1", "port": free_port()}}}
            config = make_config(tmp_path / label, await db_factory.new_settings(), test_ca, extra=extra)
            s = OurServer(config)
            await s.start()
            servers.append(s)
        yield servers[0], servers[1]
    finally:
        for s in servers:
            await s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def new_user(http: aiohttp.ClientSession, base_url: str, localpart: str | None = None) -> MatrixClient:
    client = MatrixClient(http, base_url)
    await client.register(localpart)
    return client
