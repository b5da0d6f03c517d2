"""The PostgreSQL engine, through asyncpg: a pool for ordinary statements, a connection
of its own for group commits, and a small pool that plans the hot statement once.
``?`` placeholders are rewritten to ``$n``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from homeserver.storage.engine.base import (
    DEFER_GROUP_MAX,
    PREPARED_POOL_SIZE,
    Connection,
    Database,
    DatabaseError,
    DeferredWrites,
    Dialect,
    Row,
    Statement,
    fail,
    group_statements,
    settle,
    split_statements,
    wait_for_gate,
)

T = TypeVar("T")


def first_line(e: BaseException) -> str:
    """An exception as one line: its message's first line, or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class PostgresDialect(Dialect):
    """Lists go as one array parameter (``= ANY(?)``): one statement text for any length."""

    name = "postgres"

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def not_in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"NOT ({column} = ANY(?))", [list(values)]

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.UniqueViolationError)

    def is_deadlock(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.DeadlockDetectedError)


POSTGRES = PostgresDialect()


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


async def _run_statements(conn: Any, statements: Sequence[Statement]) -> None:
    """Run ``statements`` in order on an asyncpg connection; a run of one statement text
    with different arguments goes as one pipelined ``executemany`` (one round trip)."""
    i = 0
    while i < len(statements):
        sql, args, many = statements[i]
        if many:
            if args:
                await conn.executemany(to_postgres(sql), args)
            i += 1
            continue
        j = i + 1
        while j < len(statements) and statements[j][0] == sql and not statements[j][2]:
            j += 1
        if j - i == 1:
            await conn.execute(to_postgres(sql), *args)
        else:
            await conn.executemany(to_postgres(sql), [st[1] for st in statements[i:j]])
        i = j


async def _keep_session(conn: Any) -> None:
    """The pool's reset when a connection is given back: nothing. asyncpg's default runs a
    reset query (a round trip on every release); we never change session state (no SET,
    LISTEN, advisory locks or cursors), and an open transaction is still rolled back."""


async def _warm_array_types(conn: Any) -> None:
    """Each new pool connection learns the array types of ``in_list`` parameters at once:
    asyncpg looks a type up the first time a connection meets it (12 ms for ``bigint[]``,
    measured), which would otherwise land on the first request that uses a list."""
    await conn.fetchval("SELECT $1::text[] IS NULL AND $2::bigint[] IS NULL", [], [])


class PostgresDatabase(DeferredWrites, Database):
    """PostgreSQL through an asyncpg pool.

    Deferred writes (``defer``) are committed in groups, in the order they were deferred,
    on a connection of their own (so they never wait for the pool, and a caller that holds
    a pool connection can wait for them). Every operation except the side ones first waits
    until what was deferred before it is committed, so reads and transactions see deferred
    writes issued earlier, as on SQLite.
    """

    engine = "postgres"
    dialect: Dialect = POSTGRES
    supports_defer = True

    def __init__(self, pool: Any, dsn: str | None = None, timeout: float = 10.0, prepared_pool: Any = None) -> None:
        self._pool = pool
        self._prepared_pool = prepared_pool  # None: fetchall_prepared runs on the main pool
        self._dsn = dsn
        self._timeout = timeout
        self._init_deferred()
        self._writer: Any = None  # the group commits' own connection

    @classmethod
    async def open(
        cls, dsn: str, min_size: int = 1, max_size: int = 10, timeout: float = 10.0
    ) -> PostgresDatabase:
        pool: Any = None
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, timeout=timeout, command_timeout=60,
                reset=_keep_session,
                init=_warm_array_types,
                # asyncpg prepares every statement; after five runs PostgreSQL may cache a
                # generic plan, chosen while the tables were small (a new server's always
                # are) and kept as they grow: a look-up of 50 event IDs (the /send door's,
                # then) went from an index scan to a scan of the whole events table (1.7 ->
                # 16 ms at 20,000 events). Planning each run with its values costs less.
                server_settings={"plan_cache_mode": "force_custom_plan"},
            )
            # The /send door's statement (InboxStore.admit) on connections of its own: planned
            # once per connection (a generic plan) instead of on every /send (0.6 ms of the
            # server's CPU each time, ahead of the acknowledgement). The plan must not
            # depend on table sizes: with sequential scans priced out, its look-ups always
            # take the unique indexes, however small the tables were when it was made.
            prepared = await asyncpg.create_pool(
                dsn, min_size=1, max_size=PREPARED_POOL_SIZE, timeout=timeout, command_timeout=60,
                reset=_keep_session,
                init=_warm_array_types,
                server_settings={"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"},
            )
        except Exception as e:
            if pool is not None:
                await pool.close()
            raise DatabaseError(f"cannot connect to PostgreSQL: {first_line(e)}") from None
        return cls(pool, dsn, timeout, prepared)

    # ------------------------------------------------------------------ deferred writes

    async def flush_deferred(self) -> None:
        last = self._last
        if last is not None and not last.done():
            # Groups commit in order: once the last one issued so far is done, all are.
            await asyncio.wait([last])

    async def _flush_task(self) -> None:
        while self._deferred:
            await wait_for_gate(self._gate)
            group = self._deferred[:DEFER_GROUP_MAX]
            del self._deferred[: len(group)]
            statements = group_statements(group)
            try:
                conn = await self._writer_connection()
                async with conn.transaction():
                    await _run_statements(conn, statements)
            except Exception as e:
                if self._writer is not None and self._writer.is_closed():
                    self._writer = None
                later, self._deferred = self._deferred, []
                fail([*group, *later], e, self._failure_hooks)
                continue
            settle(group)

    async def _writer_connection(self) -> Any:
        if self._writer is None or self._writer.is_closed():
            if self._dsn is None:
                raise DatabaseError("deferred writes need the DSN")
            self._writer = await asyncpg.connect(self._dsn, timeout=self._timeout, command_timeout=60)
        return self._writer

    # ------------------------------------------------------------------ statements

    async def execute(self, sql: str, *args: Any) -> int:
        await self.flush_deferred()
        async with self._pool.acquire() as conn:
            return await _PgConn(conn).execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        await self.flush_deferred()
        async with self._pool.acquire() as conn:
            return await _PgConn(conn).fetchall(sql, *args)

    async def executescript(self, script: str) -> None:
        async with self.transaction() as conn:
            await conn.executescript(script)

    async def independent_transaction(self, work: Callable[[Connection], Awaitable[T]], *, durable: bool = False) -> T:
        # Durable as PostgreSQL's synchronous_commit makes every commit (on by default).
        async with self._pool.acquire() as raw:
            conn = _PgConn(raw)
            try:
                async with raw.transaction():
                    result = await work(conn)
            except BaseException:
                conn.rolled_back()
                raise
        conn.committed()
        return result

    async def fetchall_independent(self, sql: str, *args: Any) -> list[Row]:
        async with self._pool.acquire() as conn:
            return await _PgConn(conn).fetchall(sql, *args)

    async def fetchall_prepared(self, sql: str, *args: Any) -> list[Row]:
        async with (self._prepared_pool or self._pool).acquire() as conn:
            return await _PgConn(conn).fetchall(sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        # Wait before taking a pool connection: the group commits never need one.
        await self.flush_deferred()
        async with self._pool.acquire() as raw:
            conn = _PgConn(raw)
            try:
                async with raw.transaction():
                    yield conn
            except BaseException:
                conn.rolled_back()
                raise
        conn.committed()

    async def close(self) -> None:
        try:
            await self.flush_deferred()
        finally:
            if self._flusher is not None and not self._flusher.done():
                self._flusher.cancel()
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    await self._writer.close(timeout=5)
                self._writer = None
            if self._prepared_pool is not None:
                await self._prepared_pool.close()
            await self._pool.close()


class OneTransaction(Database):
    """A PostgreSQL database seen through one connection and one open transaction: every
    statement runs in it, ``transaction()`` is a savepoint inside it, and nothing is
    visible to anyone else until ``one_transaction`` commits it. For a tool that must
    leave nothing behind when it fails (``homeserver port-db``): PostgreSQL's DDL is
    transactional, so even the tables the migrations create vanish on a rollback."""

    engine = "postgres"
    dialect: Dialect = POSTGRES

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._conn = _PgConn(raw)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return await self._conn.fetchall(sql, *args)

    async def executescript(self, script: str) -> None:
        await self._conn.executescript(script)

    async def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Append ``rows`` to ``table`` with a binary COPY (values typed as the columns)."""
        await self._raw.copy_records_to_table(table, records=rows, columns=list(columns))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        # Callbacks of a savepoint are not run: nothing is committed before the outer
        # transaction is, and the tools that use this register none.
        async with self._raw.transaction():
            yield self._conn

    async def close(self) -> None:
        """The connection belongs to ``one_transaction``, which closes it."""


@asynccontextmanager
async def one_transaction(dsn: str, timeout: float = 10.0) -> AsyncIterator[OneTransaction]:
    """Connect to ``dsn`` and open a transaction, committed when the block ends normally
    and rolled back when it raises; the connection is closed either way."""
    try:
        raw = await asyncpg.connect(dsn, timeout=timeout)
    except Exception as e:
        raise DatabaseError(f"cannot connect to PostgreSQL: {first_line(e)}") from None
    try:
        async with raw.transaction():
            yield OneTransaction(raw)
    finally:
        with contextlib.suppress(Exception):
            await raw.close(timeout=5)
