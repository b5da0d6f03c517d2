"""Shared fixtures: databases on both engines, TLS material, and in-process servers.

PostgreSQL: the DSN comes from HOMESERVER_TEST_POSTGRES_DSN (default: the local server on
127.0.0.1:5432, user postgres). When it cannot be reached, a throwaway cluster is started
from the installed binaries (initdb/pg_ctl). With HOMESERVER_REQUIRE_POSTGRES=1 (set by
.ci/run) a PostgreSQL that cannot be had fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from homeserver.storage.database import Database, open_database
from tests.pgcluster import PostgresUnavailable, get_admin_dsn, stop_throwaway_cluster

ENGINES = ["sqlite", "postgres"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_throwaway_cluster()


def _require_postgres() -> bool:
    return os.environ.get("HOMESERVER_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    try:
        return get_admin_dsn()
    except PostgresUnavailable as e:
        if _require_postgres():
            pytest.fail(f"PostgreSQL is required but unavailable: {e}")
        pytest.skip(f"PostgreSQL unavailable: {e}")


async def create_pg_database(admin_dsn: str) -> str:
    name = f"hs_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


async def drop_pg_database(admin_dsn: str, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class DatabaseFactory:
    """Makes fresh databases of one engine and removes them at the end of the test."""

    def __init__(self, engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.engine = engine
        self._tmp = tmp_path
        self._request = request
        self._pg_dsns: list[str] = []
        self._count = 0

    async def new_settings(self) -> dict[str, str]:
        """Database config settings (``engine`` and ``path`` or ``dsn``) for a fresh database."""
        self._count += 1
        if self.engine == "sqlite":
            return {"engine": "sqlite", "path": str(self._tmp / f"db{self._count}.sqlite")}
        admin = self._request.getfixturevalue("postgres_admin_dsn")
        dsn = await create_pg_database(admin)
        self._pg_dsns.append(dsn)
        return {"engine": "postgres", "dsn": dsn}

    async def open(self) -> Database:
        s = await self.new_settings()
        return await open_database(s["engine"], path=s.get("path"), dsn=s.get("dsn"))

    async def cleanup(self) -> None:
        if self._pg_dsns:
            admin = self._request.getfixturevalue("postgres_admin_dsn")
            for dsn in self._pg_dsns:
                await drop_pg_database(admin, dsn)


@pytest.fixture(params=ENGINES)
async def db_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(request.param, tmp_path, request)
    if request.param == "postgres":
        request.getfixturevalue("postgres_admin_dsn")
    try:
        yield factory
    finally:
        await factory.cleanup()


@pytest.fixture
async def db(db_factory: DatabaseFactory) -> AsyncIterator[Database]:
    database = await db_factory.open()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    from homeserver.crypto.tls import generate_ca

    d = tmp_path_factory.mktemp("ca")
    cert, key = d / "ca.crt", d / "ca.key"
    generate_ca(cert, key)
    yield cert, key
