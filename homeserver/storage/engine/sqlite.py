"""The SQLite engine: the embedded default (one file, WAL mode).

One connection on aiosqlite's thread serves ordinary statements and transactions; a
second one, used on the event loop's own thread, runs the independent transactions and
the group commits; a third, on an idle-class thread, checkpoints the write-ahead log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from homeserver.storage.engine.base import (
    DEFER_GROUP_MAX,
    INDEPENDENT_LOCK_TIMEOUT_SECONDS,
    Connection,
    Database,
    DatabaseError,
    Deferred,
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
from homeserver.storage.engine.sqlite_files import Checkpointer, WalSync

T = TypeVar("T")

# SQLite: a passive WAL checkpoint after this many group commits (about 1,000 events).
CHECKPOINT_EVERY_GROUPS = 64

log = logging.getLogger("homeserver.storage.database")


class _NoStatementRecords(logging.Filter):
    """aiosqlite logs each call it runs at DEBUG, the statement's parameters included
    (password and token hashes): those records are dropped, whatever the log level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("aiosqlite").addFilter(_NoStatementRecords())


def _create_private(path: str) -> None:
    """Create the database file, and its directory if missing, readable by the owner only
    (0600, 0700); SQLite creates the -wal and -shm files with the database file's mode. An
    existing file keeps its mode: a warning says when others may read it."""
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            log.warning("the SQLite database file is readable by others than its owner",
                        extra={"path": path, "mode": oct(mode)})
        return
    os.close(fd)


class SqliteDialect(Dialect):
    """Lists go as one JSON parameter (``json_each``): one statement text for any length."""

    name = "sqlite"

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN (SELECT value FROM json_each(?))", [_json_list(values)]

    def not_in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} NOT IN (SELECT value FROM json_each(?))", [_json_list(values)]

    def is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def is_deadlock(self, exc: BaseException) -> bool:
        return False  # one writer at a time: SQLite never deadlocks


def _json_list(values: Sequence[Any]) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


SQLITE = SqliteDialect()


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


class _InThreadConn(Connection):
    """A connection for code run whole on the database thread: every method completes
    at once (its coroutine never suspends), so the caller's coroutine can be driven to
    its end there without an event loop."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    async def execute(self, sql: str, *args: Any) -> int:
        return self._raw.execute(sql, args).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._raw.executemany(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in self._raw.execute(sql, args).fetchall()]

    async def executescript(self, script: str) -> None:
        for statement in split_statements(script):
            self._raw.execute(statement)


def _drive(raw: sqlite3.Connection, work: Callable[[Connection], Awaitable[T]], conn: Connection) -> T:
    """Run ``work`` to its end on ``raw`` (a transaction is open) through ``conn``, then
    commit; roll back on error. ``work`` only awaits its connection, whose methods never
    suspend. The caller runs ``conn``'s callbacks (this may run on the database thread)."""
    try:
        coro = work(conn)
        try:
            coro.send(None)  # type: ignore[attr-defined]
        except StopIteration as done:
            result: T = done.value
        else:  # pragma: no cover - the work awaited something else
            coro.close()  # type: ignore[attr-defined]
            raise RuntimeError("independent work must only await its connection")
        raw.execute("COMMIT")
        return result
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise


def _is_locked(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


def _run_in_thread(raw: sqlite3.Connection, work: Callable[[Connection], Awaitable[T]], conn: Connection) -> T:
    """Runs on the database thread: ``work`` in one transaction. Only an in-memory
    database gets here, which has no other connection to wait for."""
    raw.execute("BEGIN IMMEDIATE")
    return _drive(raw, work, conn)


def _apply(raw: Any, statements: Sequence[Statement]) -> None:
    """The statements, then COMMIT, in the transaction open on ``raw``; ROLLBACK on error."""
    try:
        for sql, args, many in statements:
            if many:
                raw.executemany(sql, args)
            else:
                raw.execute(sql, args)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise


def _commit_group(raw: Any, statements: Sequence[Statement]) -> None:
    """Runs on the database thread: the statements in one transaction."""
    raw.execute("BEGIN IMMEDIATE")
    _apply(raw, statements)


class SqliteDatabase(DeferredWrites, Database):
    """The embedded default: one file, WAL mode, one connection guarded by a lock (on
    aiosqlite's thread) and a side connection used on the event loop's thread.

    Deferred writes (``defer``) are write-only groups of statements whose caller does not
    wait for the commit: they accumulate while the connection is busy and are committed
    up to DEFER_GROUP_MAX in one transaction (group commit). Every other operation on the
    main connection first commits what was deferred before it, so reads and transactions always
    see deferred writes issued earlier. When a group fails it is rolled back, every write
    deferred after it fails too (it was computed on top of it), and the failure hooks run
    at once so callers can drop what they cached.
    """

    engine = "sqlite"
    dialect: Dialect = SQLITE
    supports_defer = True

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._inner = _SqliteConn(conn)
        self._init_deferred()
        # The side connection (None in memory: a second connection would be another
        # database), with its own lock. A plain sqlite3 connection used on the event loop's
        # thread itself: its transactions are short (the /send door's is about half a
        # millisecond) and never wait on a lock while blocking (see independent_transaction), and
        # running them here spares two thread hops, each of which waits for the GIL (up to
        # the 5 ms switch interval) while the loop is busy.
        self._side: sqlite3.Connection | None = None
        self._side_lock = asyncio.Lock()
        self._side_commits = 0  # group commits on the side connection since the last checkpoint
        self._checkpointer: Checkpointer | None = None  # with the side connection
        # sqlite_sync "full": syncs the write-ahead log (see independent_transaction); else None.
        self._wal_sync: Callable[[], None] | None = None
        self._sync_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self.acknowledged_syncs = 0  # durable side transactions synced so far
        self.group_syncs = 0  # group commits on the side connection synced so far

    async def flush_deferred(self) -> None:
        async with self._lock:
            await self._run_deferred()

    async def _flush_task(self) -> None:
        # One group per turn of the lock: whoever waits for the connection goes next.
        while self._deferred:
            # And one per turn of the loop: a group commit on the side connection runs on
            # this thread, and nothing below need suspend.
            await asyncio.sleep(0)
            await wait_for_gate(self._gate)
            async with self._lock:
                await self._run_deferred(once=True)
                if self._checkpointer is not None and self._side_commits >= CHECKPOINT_EVERY_GROUPS:
                    # The side connection never checkpoints (it would block the loop for the
                    # copy and its fsync); a thread of its own does (see Checkpointer). The
                    # group commits wait for it, so that it can copy everything and the next
                    # commit starts the WAL over (the WAL would otherwise only grow).
                    self._side_commits = 0
                    await self._checkpointer.checkpoint()

    async def _run_deferred(self, once: bool = False) -> None:
        """Commit what was deferred, one transaction per group (the caller holds the lock):
        what was deferred so far, not what is deferred meanwhile. With sqlite_sync "full"
        the groups committed are synced together, once, before their callers learn so."""
        unsynced: list[list[Deferred]] = []
        try:
            await self._commit_deferred(once, unsynced)
        finally:
            if unsynced:
                await self._sync_groups(unsynced)

    async def _commit_deferred(self, once: bool, unsynced: list[list[Deferred]]) -> None:
        groups = -(-len(self._deferred) // DEFER_GROUP_MAX)
        while self._deferred and groups > 0:
            groups -= 1
            # Bounded groups: whoever waits for the connection waits for one group at most.
            group, self._deferred = self._deferred[:DEFER_GROUP_MAX], self._deferred[DEFER_GROUP_MAX:]
            statements = group_statements(group)
            try:
                if self._side is None:
                    await self._conn._execute(  # type: ignore[no-untyped-call]
                        _commit_group, self._conn._connection, statements
                    )
                else:
                    # On the side connection, on this thread, in one go: on the database
                    # thread each statement gave the GIL back and waited to take it again
                    # (up to the 5 ms switch interval while the loop is busy), holding
                    # SQLite's write lock all along (3 ms typical, 15-45 ms at worst for
                    # 16 events; the /send door waited behind it).
                    async with self._side_lock:
                        await self._begin_side()
                        _apply(self._side, statements)
                    self._side_commits += 1
            except Exception as e:
                later, self._deferred = self._deferred, []
                fail([*group, *later], e, self._failure_hooks)
                return
            if self._wal_sync is None:
                settle(group)
            else:
                unsynced.append(group)  # settled once synced (_run_deferred)
            if once:
                return
            if self._side is not None and self._deferred and groups > 0:
                # Group commits on the side connection run on this thread: a turn of the
                # loop between them, so that a read waiting for all of them (a /metrics
                # scrape, a client's request) does not hold up a /send for all of them.
                await asyncio.sleep(0)

    async def _sync_wal(self) -> None:
        """sqlite_sync "full": sync the write-ahead log file, on the sync thread (the loop
        goes on meanwhile). The log is written in order: this covers every commit so far."""
        assert self._wal_sync is not None and self._sync_thread is not None
        await asyncio.get_running_loop().run_in_executor(self._sync_thread, self._wal_sync)

    async def _sync_groups(self, groups: list[list[Deferred]]) -> None:
        try:
            await self._sync_wal()
            self.group_syncs += 1
        except OSError:
            # The groups are committed: they stand (a rollback is no longer possible), but
            # whether they reached the disk is unknown.
            log.error("could not sync the SQLite write-ahead log", exc_info=True)
        for group in groups:
            settle(group)

    @classmethod
    async def open(cls, path: str, sync: str = "normal") -> SqliteDatabase:
        """``sync``: "normal" (the write-ahead log is synced at checkpoints) or "full"
        (each commit on the first connection is synced, and so are the durable side
        transactions: see ``independent_transaction``)."""
        if sync not in ("normal", "full"):
            raise DatabaseError(f"unknown SQLite sync mode {sync!r}")
        if path != ":memory:":
            _create_private(path)
        conn = await cls._connect(path, "FULL" if sync == "full" else "NORMAL")
        db = cls(conn)
        if path != ":memory:":
            # A second connection for the /send door and the inbox bookkeeping: its reads
            # and writes do not queue behind the worker's commits on the first one (WAL:
            # readers never wait; the two writers take turns on SQLite's write lock). It
            # never checkpoints (Checkpointer does), so a checkpoint never stalls a reply.
            try:
                side = sqlite3.connect(path, isolation_level=None)
                try:
                    side.execute("PRAGMA synchronous=NORMAL")
                    side.execute("PRAGMA foreign_keys=ON")
                    side.execute("PRAGMA wal_autocheckpoint=0")
                    side.execute("PRAGMA busy_timeout=0")  # it retries on its own, without blocking
                except BaseException:
                    side.close()
                    raise
            except BaseException as e:
                await conn.close()
                raise DatabaseError(f"cannot open SQLite database {path}: {e}") from None
            db._side = side
            db._checkpointer = Checkpointer(path)
            if sync == "full":
                db._wal_sync = WalSync(path + "-wal")
                db._sync_thread = concurrent.futures.ThreadPoolExecutor(1, "sqlite-sync")
        return db

    @staticmethod
    async def _connect(path: str, synchronous: str = "NORMAL") -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(f"PRAGMA synchronous={synchronous}")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute("PRAGMA busy_timeout=5000")
        except Exception as e:
            raise DatabaseError(f"cannot open SQLite database {path}: {e}") from None
        return conn

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            await self._run_deferred()
            return await self._inner.execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        async with self._lock:
            await self._run_deferred()
            return await self._inner.fetchall(sql, *args)

    async def executescript(self, script: str) -> None:
        async with self.transaction() as conn:
            await conn.executescript(script)

    async def independent_transaction(
        self, work: Callable[[Connection], Awaitable[T]], *, durable: bool = False
    ) -> T:
        side = self._side
        if side is None:
            async with self._lock:
                raw = self._conn._connection
                assert raw is not None
                conn = _InThreadConn(raw)
                try:
                    result: T = await self._conn._execute(  # type: ignore[no-untyped-call]
                        _run_in_thread, raw, work, conn
                    )
                except BaseException:
                    conn.rolled_back()
                    raise
            conn.committed()
            return result
        conn = _InThreadConn(side)
        try:
            async with self._side_lock:
                await self._begin_side()
                result = _drive(side, work, conn)
            if durable and self._wal_sync is not None:
                # The side connection runs NORMAL (its inbox bookkeeping can be redone; its
                # group commits are synced in _run_deferred): this commit is synced by
                # syncing the write-ahead log file. If that fails the caller fails (a /send
                # gets a 500, and its retry is answered from the committed transaction,
                # synced again).
                await self._sync_wal()
                self.acknowledged_syncs += 1
        except BaseException:
            conn.rolled_back()
            raise
        conn.committed()
        return result

    async def _begin_side(self) -> None:
        """BEGIN IMMEDIATE on the side connection (the caller holds its lock), without
        blocking the loop: while the other connection writes, try again every half
        millisecond (it never holds the lock for long)."""
        assert self._side is not None
        deadline = time.monotonic() + INDEPENDENT_LOCK_TIMEOUT_SECONDS
        while True:
            try:
                self._side.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if not _is_locked(e) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.0005)

    async def fetchall_independent(self, sql: str, *args: Any) -> list[Row]:
        if self._side is None:
            return await self.fetchall(sql, *args)
        async with self._side_lock:
            # A read in WAL mode never waits for a lock.
            return [tuple(r) for r in self._side.execute(sql, args).fetchall()]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            await self._run_deferred()
            txn = _SqliteTxn(self._conn)
            try:
                yield txn
            except BaseException:
                await txn.rollback()
                txn.rolled_back()
                raise
            try:
                await txn.commit()
            except BaseException:
                await txn.rollback()
                txn.rolled_back()
                raise
        txn.committed()

    async def close(self) -> None:
        try:
            await self.flush_deferred()
        finally:
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.close)
            if self._side is not None:
                self._side.close()
            if self._sync_thread is not None:
                self._sync_thread.shutdown(wait=False)
            await self._conn.close()
