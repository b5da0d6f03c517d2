"""Fixtures shared by the integration tests (a module may define its own to override)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from homeserver.server import RunningServer
from tests.clients import client_server
from tests.conftest import DatabaseFactory


@pytest.fixture
async def pair(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two servers with client listeners, on fresh databases of the engine under test."""
    async with client_server(db_factory, tmp_path / "a", test_ca) as a, \
            client_server(db_factory, tmp_path / "b", test_ca) as b:
        yield a, b
