"""The database engines behind one interface (``base``): SQLite and PostgreSQL."""

from __future__ import annotations

from homeserver.storage.engine.base import (
    Callback,
    Connection,
    Database,
    DatabaseError,
    DeferredWriteError,
    Dialect,
    Row,
    Statement,
    split_statements,
)
from homeserver.storage.engine.postgres import (
    POSTGRES,
    OneTransaction,
    PostgresDatabase,
    one_transaction,
    to_postgres,
)
from homeserver.storage.engine.sqlite import SQLITE, SqliteDatabase


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


__all__ = [
    "POSTGRES",
    "SQLITE",
    "Callback",
    "Connection",
    "Database",
    "DatabaseError",
    "DeferredWriteError",
    "Dialect",
    "OneTransaction",
    "PostgresDatabase",
    "Row",
    "SqliteDatabase",
    "Statement",
    "one_transaction",
    "open_database",
    "split_statements",
    "to_postgres",
]
