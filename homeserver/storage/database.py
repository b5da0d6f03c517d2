"""One async database interface over two engines.

SQL is written once with ``?`` placeholders; the PostgreSQL engine rewrites them to
``$1, $2, ...``. ``transaction()`` yields a connection on which every statement runs in
one database transaction, committed on success and rolled back on error. The SQLite
engine serialises all access through one connection (SQLite has one writer anyway);
PostgreSQL uses an asyncpg pool.
"""

from __future__ import annotations

import abc
import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

Row = tuple[Any, ...]


class DatabaseError(Exception):
    """The database cannot be reached or refuses to work with us."""


class Connection(abc.ABC):
    """The statements available on a database or inside a transaction."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetchall(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchone(sql, *args)
        return None if row is None else row[0]

    @abc.abstractmethod
    async def executescript(self, script: str) -> None:
        """Run several ``;``-separated statements (migrations)."""

    async def write(self, sql: str, *args: Any) -> None:
        """A statement whose result is not needed. Inside a transaction an engine may defer
        it to the next read or the commit, so several writes cost one round trip."""
        await self.execute(sql, *args)

    async def write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """``executemany`` that may be deferred like ``write``."""
        if rows:
            await self.executemany(sql, rows)


class Database(Connection):
    engine: str

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with db.transaction() as conn:`` runs statements atomically."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is either engine's unique-constraint violation."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc)
    return isinstance(exc, asyncpg.UniqueViolationError)


def split_statements(script: str) -> list[str]:
    """Split a migration script on ``;`` at line ends, dropping ``--`` comment lines."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    parts = re.split(r";\s*(?:\n|$)", "\n".join(lines))
    return [p.strip() for p in parts if p.strip()]


# --------------------------------------------------------------------------- SQLite


class _SqliteConn(Connection):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        cur = await self._conn.execute(sql, args)
        count = cur.rowcount
        await cur.close()
        return count

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        async with self._conn.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def executescript(self, script: str) -> None:
        for statement in split_statements(script):
            await self._conn.execute(statement)


class _SqliteTxn(_SqliteConn):
    """A transaction on the SQLite connection that batches writes: ``BEGIN`` and every
    ``write`` are queued and run in one hop to the database thread together with the next
    read or the ``COMMIT`` (each hop costs far more than the statements themselves)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__(conn)
        self._queue: list[tuple[str, Sequence[Any], bool]] = [("BEGIN IMMEDIATE", (), False)]
        self.begun = False

    async def _flush(self, final: str | None = None) -> None:
        batch = self._queue
        self._queue = []
        if final is not None:
            batch.append((final, (), False))
        if not batch:
            return
        if batch[0][0].startswith("BEGIN"):
            self.begun = True

        def run(raw: Any) -> None:
            for sql, args, many in batch:
                if many:
                    raw.executemany(sql, args)
                else:
                    raw.execute(sql, args)

        raw = getattr(self._conn, "_connection", None)
        if raw is None:  # pragma: no cover - aiosqlite internals changed: one hop each
            for sql, args, many in batch:
                if many:
                    await self._conn.executemany(sql, args)
                else:
                    await self._conn.execute(sql, args)
            return
        await self._conn._execute(run, raw)  # type: ignore[no-untyped-call]

    async def write(self, sql: str, *args: Any) -> None:
        self._queue.append((sql, args, False))

    async def write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._queue.append((sql, [tuple(r) for r in rows], True))

    async def execute(self, sql: str, *args: Any) -> int:
        await self._flush()
        return await super().execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.write_many(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        await self._flush()
        return await super().fetchall(sql, *args)

    async def executescript(self, script: str) -> None:
        await self._flush()
        await super().executescript(script)

    async def commit(self) -> None:
        await self._flush("COMMIT")

    async def rollback(self) -> None:
        self._queue = []
        if self.begun:
            await self._conn.execute("ROLLBACK")


class SqliteDatabase(Database):
    """The embedded default: one file, WAL mode, one connection guarded by a lock."""

    engine = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._inner = _SqliteConn(conn)

    @classmethod
    async def open(cls, path: str) -> SqliteDatabase:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
        except Exception as e:
            raise DatabaseError(f"cannot open SQLite database {path}: {e}") from None
        return cls(conn)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await self._inner.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            return await self._inner.fetchall(sql, *args)

    async def executescript(self, script: str) -> None:
        async with self.transaction() as conn:
            await conn.executescript(script)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            txn = _SqliteTxn(self._conn)
            try:
                yield txn
            except BaseException:
                await txn.rollback()
                raise
            try:
                await txn.commit()
            except BaseException:
                await txn.rollback()
                raise

    async def close(self) -> None:
        await self._conn.close()


# --------------------------------------------------------------------------- PostgreSQL

_PLACEHOLDER = re.compile(r"\?")


def to_postgres(sql: str) -> str:
    """Rewrite ``?`` placeholders to ``$n``. Our SQL never has ``?`` inside literals."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


class _PgConn(Connection):
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(to_postgres(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(to_postgres(sql), rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(to_postgres(sql), *args)]

    async def executescript(self, script: str) -> None:
        for statement in split_statements(script):
            await self._conn.execute(statement)


class PostgresDatabase(Database):
    """PostgreSQL through an asyncpg pool."""

    engine = "postgres"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, dsn: str, min_size: int = 1, max_size: int = 10, timeout: float = 10.0
    ) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, timeout=timeout, command_timeout=60
            )
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DatabaseError(f"cannot connect to PostgreSQL: {reason}") from None
        return cls(pool)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._pool.acquire() as conn:
            return await _PgConn(conn).execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        async with self._pool.acquire() as conn:
            return await _PgConn(conn).fetchall(sql, *args)

    async def executescript(self, script: str) -> None:
        async with self.transaction() as conn:
            await conn.executescript(script)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgConn(conn)

    async def close(self) -> None:
        await self._pool.close()


async def open_database(
    engine: str,
    *,
    path: str | None = None,
    dsn: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = 10.0,
) -> Database:
    if engine == "sqlite":
        return await SqliteDatabase.open(path or ":memory:")
    if engine == "postgres":
        if not dsn:
            raise DatabaseError("PostgreSQL needs a DSN")
        return await PostgresDatabase.open(dsn, min_size, max_size, timeout)
    raise DatabaseError(f"unknown database engine {engine!r}")
