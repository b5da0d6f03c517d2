"""One async database interface over two engines.

SQL is written once with ``?`` placeholders; the PostgreSQL engine rewrites them to
``$1, $2, ...``. ``transaction()`` yields a connection on which every statement runs in
one database transaction, committed on success and rolled back on error. The SQLite
engine serialises ordinary access through one connection (SQLite has one writer anyway),
with a second one for the side work and group commits; PostgreSQL uses an asyncpg pool,
with a connection of its own for group commits.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import asyncpg

Row = tuple[Any, ...]
T = TypeVar("T")


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


# The side connection waits this long at most for SQLite's write lock.
DOOR_LOCK_TIMEOUT_SECONDS = 5.0

# PostgreSQL: connections for the /send door's statement (beside database.pool_max_size).
DOOR_POOL_SIZE = 4

# Group commits hold back this long at most while the gate is closed.
DEFER_GATE_SECONDS = 0.05

# Deferred writes committed together at most (each is one event's writes, say).
DEFER_GROUP_MAX = 16

# SQLite: a passive WAL checkpoint after this many group commits (about 1,000 events).
CHECKPOINT_EVERY_GROUPS = 64
# Group commits wait this long at most for a checkpoint (its thread is idle-class: on a
# saturated machine it may not run for a while; the WAL then grows until it does).
CHECKPOINT_WAIT_SECONDS = 1.0

log = logging.getLogger(__name__)

# One statement of a deferred write: (sql, args, is_executemany).
Statement = tuple[str, Sequence[Any], bool]


class DeferredWriteError(DatabaseError):
    """A deferred write was not committed (its group failed, or one before it did)."""


# A deferred write: its statements and the future its caller holds.
Deferred = tuple[list[Statement], "asyncio.Future[None]"]


def _settle(group: Sequence[Deferred]) -> None:
    """The group is committed: its callers learn so."""
    for _, future in group:
        if not future.done():
            future.set_result(None)


def _fail(failed: Sequence[Deferred], error: Exception, hooks: Sequence[Callable[[], None]]) -> None:
    """A group failed: it and everything deferred after it (computed on top of it) fail,
    and the failure hooks run at once, before any other task, so caches can be dropped."""
    exc = DeferredWriteError(f"deferred write failed: {error}")
    for _, future in failed:
        if not future.done():
            future.set_exception(exc)
    for hook in hooks:
        hook()


async def _wait_for_gate(gate: asyncio.Event | None) -> None:
    """Hold a group commit back while ``gate`` is clear, for DEFER_GATE_SECONDS at most."""
    if gate is not None and not gate.is_set():
        try:
            async with asyncio.timeout(DEFER_GATE_SECONDS):
                await gate.wait()
        except TimeoutError:
            pass


class Database(Connection):
    engine: str
    # Whether ``defer`` is available (see SqliteDatabase.defer).
    supports_defer = False

    def defer(self, statements: list[Statement]) -> asyncio.Future[None]:
        raise NotImplementedError

    def on_deferred_failure(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs, synchronously, when deferred writes failed (see SqliteDatabase)."""

    async def flush_deferred(self) -> None:
        """Wait until every deferred write issued so far is committed (or failed)."""

    def set_defer_gate(self, gate: asyncio.Event) -> None:
        """Group commits start only while ``gate`` is set (or after a short wait)."""

    async def side_transaction(self, work: Callable[[Connection], Awaitable[T]], *, durable: bool = False) -> T:
        """Run ``work`` in one transaction that need not see deferred writes (the /send
        door, the inbox bookkeeping). ``work`` may only await the connection it is given:
        SQLite runs it whole in one hop on a second connection, so it never queues behind
        the first one's commits; PostgreSQL runs it as an ordinary transaction.
        ``durable``: the commit is about to be acknowledged to another server (the door);
        with SQLite's ``sqlite_sync: full`` it is on disk before this returns."""
        async with self.transaction() as conn:
            return await work(conn)

    async def fetchall_side(self, sql: str, *args: Any) -> list[Row]:
        """A read that need not see deferred writes (SQLite: on the second connection)."""
        return await self.fetchall(sql, *args)

    async def fetchall_door(self, sql: str, *args: Any) -> list[Row]:
        """The /send door's one statement: ``fetchall_side``, except that PostgreSQL runs it
        on connections of its own that plan it once (``PostgresDatabase``)."""
        return await self.fetchall_side(sql, *args)

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with db.transaction() as conn:`` runs statements atomically."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class _DeferredWrites:
    """What both engines keep for deferred writes (``Database.defer``): the queue of
    groups not yet committed, the failure hooks, the gate, and the task committing them
    (``_flush_task``, the engine's own)."""

    def _init_deferred(self) -> None:
        self._deferred: list[Deferred] = []
        self._last: asyncio.Future[None] | None = None  # the last deferred write's future
        self._flusher: asyncio.Task[None] | None = None
        self._failure_hooks: list[Callable[[], None]] = []
        # Set: group commits may start. Cleared (by whoever answers remote servers) to hold
        # them back, for at most DEFER_GATE_SECONDS each.
        self._gate: asyncio.Event | None = None

    def defer(self, statements: list[Statement]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._deferred.append((statements, future))
        self._last = future
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_task())
        return future

    def on_deferred_failure(self, hook: Callable[[], None]) -> None:
        self._failure_hooks.append(hook)

    def set_defer_gate(self, gate: asyncio.Event) -> None:
        self._gate = gate

    async def _flush_task(self) -> None:
        raise NotImplementedError


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is either engine's unique-constraint violation."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc)
    return isinstance(exc, asyncpg.UniqueViolationError)


def is_deadlock(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL's deadlock detected (the transaction was rolled back)."""
    return isinstance(exc, asyncpg.DeadlockDetectedError)


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


def _drive(raw: sqlite3.Connection, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run ``work`` to its end on ``raw`` (a transaction is open), then commit; roll back
    on error. ``work`` only awaits its connection, whose methods never suspend."""
    try:
        coro = work(_InThreadConn(raw))
        try:
            coro.send(None)  # type: ignore[attr-defined]
        except StopIteration as done:
            result: T = done.value
        else:  # pragma: no cover - the work awaited something else
            coro.close()  # type: ignore[attr-defined]
            raise RuntimeError("side work must only await its connection")
        raw.execute("COMMIT")
        return result
    except BaseException:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        raise


class _WalSync:
    """fsync the SQLite write-ahead log file (it exists while connections are open), and
    the first time its directory too (the file may have been created at start-up)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._directory_synced = False

    def __call__(self) -> None:
        _fsync(self._path)
        if not self._directory_synced:
            _fsync(os.path.dirname(os.path.abspath(self._path)))
            self._directory_synced = True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_locked(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


def _run_in_thread(raw: sqlite3.Connection, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Runs on the database thread: ``work`` in one transaction. Only an in-memory
    database gets here, which has no other connection to wait for."""
    raw.execute("BEGIN IMMEDIATE")
    return _drive(raw, work)


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


class SqliteDatabase(_DeferredWrites, Database):
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
    supports_defer = True

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._inner = _SqliteConn(conn)
        self._init_deferred()
        # The side connection (None in memory: a second connection would be another
        # database), with its own lock. A plain sqlite3 connection used on the event loop's
        # thread itself: its transactions are short (the /send door's is about half a
        # millisecond) and never wait on a lock while blocking (see side_transaction), and
        # running them here spares two thread hops, each of which waits for the GIL (up to
        # the 5 ms switch interval) while the loop is busy.
        self._side: sqlite3.Connection | None = None
        self._side_lock = asyncio.Lock()
        self._side_commits = 0  # group commits on the side connection since the last checkpoint
        self._checkpointer: _Checkpointer | None = None  # with the side connection
        # sqlite_sync "full": syncs the write-ahead log (see side_transaction); else None.
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
            await _wait_for_gate(self._gate)
            async with self._lock:
                await self._run_deferred(once=True)
                if self._checkpointer is not None and self._side_commits >= CHECKPOINT_EVERY_GROUPS:
                    # The side connection never checkpoints (it would block the loop for the
                    # copy and its fsync); a thread of its own does (see _Checkpointer). The
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
            statements = [st for sts, _ in group for st in sts]
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
                _fail([*group, *later], e, self._failure_hooks)
                return
            if self._wal_sync is None:
                _settle(group)
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
            _settle(group)

    @classmethod
    async def open(cls, path: str, sync: str = "normal") -> SqliteDatabase:
        """``sync``: "normal" (the write-ahead log is synced at checkpoints) or "full"
        (each commit on the first connection is synced, and so are the durable side
        transactions: see ``side_transaction``)."""
        if sync not in ("normal", "full"):
            raise DatabaseError(f"unknown SQLite sync mode {sync!r}")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = await cls._connect(path, "FULL" if sync == "full" else "NORMAL")
        db = cls(conn)
        if path != ":memory:":
            # A second connection for the /send door and the inbox bookkeeping: its reads
            # and writes do not queue behind the worker's commits on the first one (WAL:
            # readers never wait; the two writers take turns on SQLite's write lock). It
            # never checkpoints (_Checkpointer does), so a checkpoint never stalls a reply.
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
            db._checkpointer = _Checkpointer(path)
            if sync == "full":
                db._wal_sync = _WalSync(path + "-wal")
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

    async def side_transaction(self, work: Callable[[Connection], Awaitable[T]], *, durable: bool = False) -> T:
        side = self._side
        if side is None:
            async with self._lock:
                result: T = await self._conn._execute(  # type: ignore[no-untyped-call]
                    _run_in_thread, self._conn._connection, work
                )
                return result
        async with self._side_lock:
            await self._begin_side()
            result = _drive(side, work)
        if durable and self._wal_sync is not None:
            # The side connection runs NORMAL (its inbox bookkeeping can be redone; its
            # group commits are synced in _run_deferred): this commit is synced by syncing
            # the write-ahead log file. If that fails the caller fails (a /send gets a 500,
            # and its retry is answered from the committed transaction, synced again).
            await self._sync_wal()
            self.acknowledged_syncs += 1
        return result

    async def _begin_side(self) -> None:
        """BEGIN IMMEDIATE on the side connection (the caller holds its lock), without
        blocking the loop: while the other connection writes, try again every half
        millisecond (it never holds the lock for long)."""
        assert self._side is not None
        deadline = time.monotonic() + DOOR_LOCK_TIMEOUT_SECONDS
        while True:
            try:
                self._side.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if not _is_locked(e) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.0005)

    async def fetchall_side(self, sql: str, *args: Any) -> list[Row]:
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
                raise
            try:
                await txn.commit()
            except BaseException:
                await txn.rollback()
                raise

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


class _Checkpointer:
    """Passive WAL checkpoints on a thread and connection of their own, in the idle
    scheduling class where the system has it. A checkpoint copies what the group commits
    wrote into the database file and syncs it: milliseconds of CPU and I/O every thousand
    events or so. On the first connection's thread it took a core from the event loop:
    acknowledgements came 2-4 ms later at p99 with checkpoints than without (measured). An
    idle-class thread gives way at once to the loop; the GIL is released while it copies."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._wanted = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stopping = False
        self.checkpoints = 0  # run so far (observability, tests)
        self.native_id: int | None = None  # the thread's, once it runs (tests)
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    async def checkpoint(self) -> None:
        """Run a passive checkpoint on the thread; return when it is done, or after
        CHECKPOINT_WAIT_SECONDS (it still runs when the thread gets a core)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((loop, future))
        self._wanted.set()
        try:
            async with asyncio.timeout(CHECKPOINT_WAIT_SECONDS):
                await asyncio.shield(future)
        except TimeoutError:
            log.warning("WAL checkpoint is late; group commits go on without it")

    def close(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self.native_id = threading.get_native_id()
        policy = getattr(os, "SCHED_IDLE", None)
        if policy is not None:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, policy, os.sched_param(0))  # this thread only
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                waiters, self._waiters = self._waiters, []
                if not self._stopping:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        self.checkpoints += 1
                    except sqlite3.Error as e:
                        log.warning("WAL checkpoint failed", extra={"error": str(e)})
                for loop, future in waiters:
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(_resolve, future)
                if self._stopping:
                    return
        finally:
            conn.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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


class PostgresDatabase(_DeferredWrites, Database):
    """PostgreSQL through an asyncpg pool.

    Deferred writes (``defer``) are committed in groups, in the order they were deferred,
    on a connection of their own (so they never wait for the pool, and a caller that holds
    a pool connection can wait for them). Every operation except the side ones first waits
    until what was deferred before it is committed, so reads and transactions see deferred
    writes issued earlier, as on SQLite.
    """

    engine = "postgres"
    supports_defer = True

    def __init__(self, pool: Any, dsn: str | None = None, timeout: float = 10.0, door_pool: Any = None) -> None:
        self._pool = pool
        self._door_pool = door_pool  # None: the door's statement runs on the main pool
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
            door = await asyncpg.create_pool(
                dsn, min_size=1, max_size=DOOR_POOL_SIZE, timeout=timeout, command_timeout=60,
                reset=_keep_session,
                server_settings={"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"},
            )
        except Exception as e:
            if pool is not None:
                await pool.close()
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DatabaseError(f"cannot connect to PostgreSQL: {reason}") from None
        return cls(pool, dsn, timeout, door)

    # ------------------------------------------------------------------ deferred writes

    async def flush_deferred(self) -> None:
        last = self._last
        if last is not None and not last.done():
            # Groups commit in order: once the last one issued so far is done, all are.
            await asyncio.wait([last])

    async def _flush_task(self) -> None:
        while self._deferred:
            await _wait_for_gate(self._gate)
            group = self._deferred[:DEFER_GROUP_MAX]
            del self._deferred[: len(group)]
            statements = [st for sts, _ in group for st in sts]
            try:
                conn = await self._writer_connection()
                async with conn.transaction():
                    await _run_statements(conn, statements)
            except Exception as e:
                if self._writer is not None and self._writer.is_closed():
                    self._writer = None
                later, self._deferred = self._deferred, []
                _fail([*group, *later], e, self._failure_hooks)
                continue
            _settle(group)

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

    async def side_transaction(self, work: Callable[[Connection], Awaitable[T]], *, durable: bool = False) -> T:
        # Durable as PostgreSQL's synchronous_commit makes every commit (on by default).
        async with self._pool.acquire() as conn, conn.transaction():
            return await work(_PgConn(conn))

    async def fetchall_side(self, sql: str, *args: Any) -> list[Row]:
        async with self._pool.acquire() as conn:
            return await _PgConn(conn).fetchall(sql, *args)

    async def fetchall_door(self, sql: str, *args: Any) -> list[Row]:
        async with (self._door_pool or self._pool).acquire() as conn:
            return await _PgConn(conn).fetchall(sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        # Wait before taking a pool connection: the group commits never need one.
        await self.flush_deferred()
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgConn(conn)

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
            if self._door_pool is not None:
                await self._door_pool.close()
            await self._pool.close()


async def open_database(
    engine: str,
    *,
    path: str | None = None,
    dsn: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = 10.0,
    sqlite_sync: str = "normal",
) -> Database:
    if engine == "sqlite":
        return await SqliteDatabase.open(path or ":memory:", sqlite_sync)
    if engine == "postgres":
        if not dsn:
            raise DatabaseError("PostgreSQL needs a DSN")
        return await PostgresDatabase.open(dsn, min_size, max_size, timeout)
    raise DatabaseError(f"unknown database engine {engine!r}")
