"""What both database engines share: the statement interface, transaction callbacks,
deferred (group-committed) writes, and the dialect that names each engine's abilities.

SQL is written once with ``?`` placeholders. A transaction's connection takes callbacks:
``call_after`` runs once the transaction has committed (plain transactions, independent
ones and group commits alike), ``call_on_exception`` once it has been rolled back. Code
outside ``storage/`` never asks which engine it runs on: a store asks its dialect.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

Row = tuple[Any, ...]
T = TypeVar("T")
Callback = Callable[[], object]

log = logging.getLogger("homeserver.storage.database")


class DatabaseError(Exception):
    """The database cannot be reached or refuses to work with us."""


def run_callbacks(callbacks: Sequence[Callback]) -> None:
    """Run transaction callbacks in order; one that raises is logged and the rest still run."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("a transaction callback failed")


class Dialect(abc.ABC):
    """One engine's abilities and SQL idioms, asked by the stores (never by domain code)."""

    name: str

    @abc.abstractmethod
    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: a condition and its arguments, in ``?`` form.
        The statement text does not depend on how many values there are."""

    @abc.abstractmethod
    def not_in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is none of ``values`` (an empty list excludes nothing)."""

    @abc.abstractmethod
    def is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this engine's unique-constraint violation."""

    @abc.abstractmethod
    def is_deadlock(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the transaction was rolled back to break a deadlock."""


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

    # ------------------------------------------------------------------ callbacks

    def call_after(self, callback: Callback) -> None:
        """Run ``callback()`` once this transaction has committed (never if it rolls back)."""
        self._callbacks()[0].append(callback)

    def call_on_exception(self, callback: Callback) -> None:
        """Run ``callback()`` if this transaction is rolled back (never if it commits)."""
        self._callbacks()[1].append(callback)

    def _callbacks(self) -> tuple[list[Callback], list[Callback]]:
        pair: tuple[list[Callback], list[Callback]] | None = getattr(self, "_callback_lists", None)
        if pair is None:
            pair = ([], [])
            self._callback_lists = pair
        return pair

    def take_callbacks(self) -> tuple[list[Callback], list[Callback]]:
        """The callbacks registered so far (after-commit, on-exception), and forget them."""
        pair = self._callbacks()
        self._callback_lists = ([], [])
        return pair

    def committed(self) -> None:
        """The transaction committed: run its after-commit callbacks."""
        after, _ = self.take_callbacks()
        run_callbacks(after)

    def rolled_back(self) -> None:
        """The transaction rolled back: run its on-exception callbacks."""
        _, on_exception = self.take_callbacks()
        run_callbacks(on_exception)


# The independent connection waits this long at most for SQLite's write lock.
INDEPENDENT_LOCK_TIMEOUT_SECONDS = 5.0

# PostgreSQL: connections for the prepared statement (beside database.pool_max_size).
PREPARED_POOL_SIZE = 4

# Group commits hold back this long at most while the gate is closed.
DEFER_GATE_SECONDS = 0.05

# Deferred writes committed together at most (each is one event's writes, say).
DEFER_GROUP_MAX = 16

# One statement of a deferred write: (sql, args, is_executemany).
Statement = tuple[str, Sequence[Any], bool]


class DeferredWriteError(DatabaseError):
    """A deferred write was not committed (its group failed, or one before it did)."""


class Deferred:
    """A deferred write: its statements, the future its caller holds, and its callbacks."""

    __slots__ = ("after", "future", "on_exception", "statements")

    def __init__(
        self,
        statements: list[Statement],
        future: asyncio.Future[None],
        after: Sequence[Callback] = (),
        on_exception: Sequence[Callback] = (),
    ) -> None:
        self.statements = statements
        self.future = future
        self.after = after
        self.on_exception = on_exception


def settle(group: Sequence[Deferred]) -> None:
    """The group is committed: its callbacks run and its callers learn so."""
    for deferred in group:
        run_callbacks(deferred.after)
        if not deferred.future.done():
            deferred.future.set_result(None)


def fail(failed: Sequence[Deferred], error: Exception, hooks: Sequence[Callable[[], None]]) -> None:
    """A group failed: it and everything deferred after it (computed on top of it) fail,
    and the failure hooks run at once, before any other task, so caches can be dropped."""
    exc = DeferredWriteError(f"deferred write failed: {error}")
    for deferred in failed:
        run_callbacks(deferred.on_exception)
        if not deferred.future.done():
            deferred.future.set_exception(exc)
    for hook in hooks:
        hook()


def group_statements(group: Sequence[Deferred]) -> list[Statement]:
    return [st for deferred in group for st in deferred.statements]


async def wait_for_gate(gate: asyncio.Event | None) -> None:
    """Hold a group commit back while ``gate`` is clear, for DEFER_GATE_SECONDS at most."""
    if gate is not None and not gate.is_set():
        try:
            async with asyncio.timeout(DEFER_GATE_SECONDS):
                await gate.wait()
        except TimeoutError:
            pass


class Database(Connection):
    """A database: statements outside a transaction autocommit, so ``call_after`` on the
    database itself runs the callback at once."""

    engine: str
    dialect: Dialect
    # Whether ``defer`` is available (see SqliteDatabase.defer).
    supports_defer = False

    def call_after(self, callback: Callback) -> None:
        run_callbacks([callback])

    def call_on_exception(self, callback: Callback) -> None:
        """Outside a transaction there is nothing to roll back."""

    def defer(
        self,
        statements: list[Statement],
        after: Sequence[Callback] = (),
        on_exception: Sequence[Callback] = (),
    ) -> asyncio.Future[None]:
        raise NotImplementedError

    def on_deferred_failure(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs, synchronously, when deferred writes failed (see SqliteDatabase)."""

    async def flush_deferred(self) -> None:
        """Wait until every deferred write issued so far is committed (or failed)."""

    def set_group_commit_gate(self, gate: asyncio.Event) -> None:
        """Group commits start only while ``gate`` is set (or after a short wait)."""

    async def independent_transaction(
        self, work: Callable[[Connection], Awaitable[T]], *, durable: bool = False
    ) -> T:
        """Run ``work`` in one transaction that need not see deferred writes. ``work`` may
        only await the connection it is given: SQLite runs it whole in one hop on a second
        connection, so it never queues behind the first one's commits; PostgreSQL runs it
        as an ordinary transaction. ``durable``: the commit is about to be acknowledged to
        another party; with SQLite's ``sqlite_sync: full`` it is on disk before this
        returns. Callbacks registered on the connection run after the commit."""
        async with self.transaction() as conn:
            return await work(conn)

    async def fetchall_independent(self, sql: str, *args: Any) -> list[Row]:
        """A read that need not see deferred writes (SQLite: on the second connection)."""
        return await self.fetchall(sql, *args)

    async def fetchall_prepared(self, sql: str, *args: Any) -> list[Row]:
        """``fetchall_independent`` for a hot statement: PostgreSQL runs it on connections
        of its own that plan it once (``PostgresDatabase``)."""
        return await self.fetchall_independent(sql, *args)

    @abc.abstractmethod
    def transaction(self) -> Any:
        """``async with db.transaction() as conn:`` runs statements atomically."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class DeferredWrites:
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

    def defer(
        self,
        statements: list[Statement],
        after: Sequence[Callback] = (),
        on_exception: Sequence[Callback] = (),
    ) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._deferred.append(Deferred(statements, future, after, on_exception))
        self._last = future
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_task())
        return future

    def on_deferred_failure(self, hook: Callable[[], None]) -> None:
        self._failure_hooks.append(hook)

    def set_group_commit_gate(self, gate: asyncio.Event) -> None:
        self._gate = gate

    async def _flush_task(self) -> None:
        raise NotImplementedError


def split_statements(script: str) -> list[str]:
    """Split a migration script on ``;`` at line ends, dropping ``--`` comment lines."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    parts = re.split(r";\s*(?:\n|$)", "\n".join(lines))
    return [p.strip() for p in parts if p.strip()]
