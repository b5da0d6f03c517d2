"""The database interface the stores use: ``homeserver.storage.engine`` re-exported.

SQL is written once with ``?`` placeholders; the PostgreSQL engine rewrites them to
``$1, $2, ...``. ``transaction()`` yields a connection on which every statement runs in
one database transaction, committed on success and rolled back on error, with
``call_after`` / ``call_on_exception`` callbacks. Only modules under ``storage/`` import
this: the rest of the server calls stores.
"""

from __future__ import annotations

from homeserver.storage.engine import (
    POSTGRES,
    SQLITE,
    Callback,
    Connection,
    Database,
    DatabaseError,
    DeferredWriteError,
    Dialect,
    PostgresDatabase,
    Row,
    SqliteDatabase,
    Statement,
    open_database,
    split_statements,
    to_postgres,
)


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is either engine's unique-constraint violation."""
    return SQLITE.is_unique_violation(exc) or POSTGRES.is_unique_violation(exc)


def is_deadlock(exc: BaseException) -> bool:
    """Whether ``exc`` is a deadlock that rolled the transaction back (PostgreSQL)."""
    return POSTGRES.is_deadlock(exc)


__all__ = [
    "Callback",
    "Connection",
    "Database",
    "DatabaseError",
    "DeferredWriteError",
    "Dialect",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "Statement",
    "is_deadlock",
    "is_unique_violation",
    "open_database",
    "split_statements",
    "to_postgres",
]
