"""Copying the SQLite database into an empty PostgreSQL one (``homeserver port-db``).

What it guarantees:

- The source is only read: opened read-only, in one read transaction (one snapshot of the
  whole file), never migrated. It must be at the schema version this code knows (else:
  ``homeserver migrate`` first, or a newer homeserver). It is refused while another
  process, a running server, has the file open.
- The target is written in one transaction: the schema by the ordinary migrations, then
  every table of the source in batches (found in ``sqlite_master``, so a table added by a
  later migration is ported without being named here; the search index, kept by each
  engine its own way, is rebuilt from the events instead), each value converted to its
  target column's type; then every serial or identity sequence is moved past the highest
  key the source allocated; then the row counts are compared table by table. Any failure
  rolls it all back: the target is left as it was, empty.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from homeserver.storage.database import DatabaseError
from homeserver.storage.engine.postgres import OneTransaction, first_line, one_transaction
from homeserver.storage.engine.sqlite_files import open_elsewhere
from homeserver.storage.migrations import current_version, discover, migrate
from homeserver.storage.search import DERIVED_TABLE, REBUILD_POSTGRES_INDEX, engine_own_table

# The one table not copied: the target's own migrations write it.
MIGRATIONS_TABLE = "schema_migrations"
DEFAULT_BATCH_SIZE = 5000


class PortError(Exception):
    """The database cannot be ported as asked; nothing was written to the target."""


class DatabaseSettings(Protocol):
    """What porting and backups read of the config's ``database`` section."""

    @property
    def engine(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def dsn(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    source: int
    target: int


@dataclass(frozen=True, slots=True)
class PortReport:
    schema_version: int
    counts: list[TableCount]
    # (table, column, the next value its sequence gives)
    sequences: list[tuple[str, str, int]]

    @property
    def rows(self) -> int:
        return sum(c.source for c in self.counts)


class CountMismatchError(PortError):
    """A table's row count differs between source and target (the target was rolled back)."""

    def __init__(self, counts: list[TableCount]) -> None:
        self.counts = counts
        bad = [c for c in counts if c.source != c.target]
        listed = ", ".join(f"{c.table} ({c.source} in SQLite, {c.target} in PostgreSQL)" for c in bad)
        super().__init__(f"row counts differ, nothing was kept: {listed}")


def sqlite_path(settings: DatabaseSettings) -> str:
    """The SQLite file of the config, or a PortError when the config is not on SQLite."""
    if settings.engine != "sqlite":
        raise PortError(
            f"port-db copies a SQLite database, and this config's database.engine is {settings.engine}"
        )
    return settings.path


def latest_version() -> int:
    """The schema version this code migrates to (both engines know the same versions)."""
    migrations = discover("sqlite")
    if not migrations:
        raise PortError("no schema migrations found: the package is installed without its data files")
    return migrations[-1].version


# ---------------------------------------------------------------------- the source


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Source:
    """The SQLite file, read-only, in one read transaction opened at the first read."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def version(self) -> int:
        try:
            value = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # no schema_migrations: never migrated
        return int(value) if value is not None else 0

    def tables(self) -> dict[str, list[str]]:
        """Every table of ours (name -> column names in order), SQLite's own and the
        migrations' table left out."""
        names = [
            row[0] for row in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
                " ORDER BY name"
            )
        ]
        return {
            name: [row[1] for row in self._conn.execute(f"PRAGMA table_info({_ident(name)})")]
            for name in names if name != MIGRATIONS_TABLE and not engine_own_table(name)
        }

    def has_table(self, name: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None

    def count(self, table: str) -> int:
        return int(self._conn.execute(f"SELECT COUNT(*) FROM {_ident(table)}").fetchone()[0])

    def batches(self, table: str, columns: Sequence[str], size: int) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self._conn.execute(f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(table)}")
        try:
            while batch := cursor.fetchmany(size):
                yield batch
        finally:
            cursor.close()

    def allocated(self) -> dict[str, int]:
        """Per AUTOINCREMENT table, the highest key it ever gave (sqlite_sequence): above
        the table's highest row when its newest rows were deleted (a stream position a
        client may hold, say), so the target must not give those keys again."""
        try:
            rows = self._conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
        except sqlite3.OperationalError:
            return {}  # no AUTOINCREMENT table
        return {str(name).lower(): int(seq) for name, seq in rows if seq is not None}


@contextmanager
def _open_source(path: str) -> Iterator[_Source]:
    uri = "file:" + quote(str(Path(path).resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise PortError(f"cannot open the SQLite database {path}: {e}") from None
    try:
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot starts here
        except sqlite3.Error as e:
            raise PortError(f"cannot read the SQLite database {path}: {e}") from None
        yield _Source(conn)
    finally:
        conn.close()


# ---------------------------------------------------------------------- values


def _to_int(value: Any) -> Any:
    if value is None or type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueError("not an integer")


def _to_text(value: Any) -> Any:
    if value is None or type(value) is str:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, int | float):
        return str(value)
    raise ValueError("not text")


def _to_bytes(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError("not bytes")


def _to_bool(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "t", "f", "0", "1"):
        return value.lower() in ("true", "t", "1")
    raise ValueError("not a boolean")


def _to_float(value: Any) -> Any:
    if value is None or isinstance(value, float):
        return value
    if isinstance(value, int | str):
        return float(value)
    raise ValueError("not a number")


def _to_decimal(value: Any) -> Any:
    return None if value is None else Decimal(str(value))


def _keep(value: Any) -> Any:
    return value


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bigint": _to_int, "integer": _to_int, "smallint": _to_int,
    "text": _to_text, "character varying": _to_text, "character": _to_text,
    # JSON stays the text SQLite holds (asyncpg takes json and jsonb as text).
    "json": _to_text, "jsonb": _to_text,
    "bytea": _to_bytes,
    "boolean": _to_bool,
    "double precision": _to_float, "real": _to_float,
    "numeric": _to_decimal,
}


def convert_rows(
    table: str, columns: Sequence[str], types: Sequence[str], rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    converters = [_CONVERTERS.get(t, _keep) for t in types]
    out = []
    for row in rows:
        try:
            out.append(tuple(conv(v) for conv, v in zip(converters, row, strict=True)))
        except (ValueError, UnicodeDecodeError):
            for column, kind, conv, v in zip(columns, types, converters, row, strict=True):
                try:
                    conv(v)
                except (ValueError, UnicodeDecodeError):
                    shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
                    raise PortError(f"{table}.{column}: cannot store {shown} as {kind}") from None
            raise
    return out


# ---------------------------------------------------------------------- the target


async def _our_tables_on(target: OneTransaction, ours: set[str]) -> list[str]:
    rows = await target.fetchall(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    return sorted(name for (name,) in rows if name in ours)


async def _target_columns(target: OneTransaction) -> dict[str, dict[str, str]]:
    """table -> column -> data type, for the tables of the target's schema."""
    rows = await target.fetchall(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    )
    columns: dict[str, dict[str, str]] = {}
    for table, column, data_type in rows:
        columns.setdefault(table, {})[column] = data_type
    return columns


async def _foreign_keys(target: OneTransaction) -> list[tuple[str, str]]:
    """(table, the table it refers to) for every foreign key of the target's schema."""
    rows = await target.fetchall(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
        " WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace"
    )
    return [(str(a).strip('"'), str(b).strip('"')) for a, b in rows]


def copy_order(tables: Sequence[str], references: Sequence[tuple[str, str]]) -> list[str]:
    """``tables`` ordered so that a table comes after those its foreign keys refer to
    (alphabetical otherwise; the tables of a reference cycle last, alphabetically)."""
    needs = {t: {b for a, b in references if a == t and b != t and b in tables} for t in tables}
    order: list[str] = []
    while True:
        ready = sorted(t for t, deps in needs.items() if t not in order and deps <= set(order))
        if not ready:
            break
        order.extend(ready)
    return order + sorted(t for t in tables if t not in order)


async def _reset_sequences(target: OneTransaction, allocated: dict[str, int]) -> list[tuple[str, str, int]]:
    """Move every serial / identity sequence of the target past the highest key in its
    column and the highest the source ever allocated for the table."""
    rows = await target.fetchall(
        "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name)"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND pg_get_serial_sequence(quote_ident(table_name), column_name) IS NOT NULL"
        " ORDER BY table_name, column_name"
    )
    done = []
    for table, column, sequence in rows:
        highest = await target.fetchval(f"SELECT MAX({_ident(column)}) FROM {_ident(table)}")
        last = max(int(highest or 0), allocated.get(table, 0))
        if last >= 1:
            await target.fetchval("SELECT setval(CAST(? AS TEXT)::regclass, CAST(? AS BIGINT), true)",
                                  sequence, last)
        else:
            await target.fetchval("SELECT setval(CAST(? AS TEXT)::regclass, 1, false)", sequence)
        done.append((table, column, max(last, 0) + 1))
    return done


# ---------------------------------------------------------------------- the port


def _idle_source(settings: DatabaseSettings) -> str:
    """The config's SQLite file, which exists and no other process has open."""
    path = sqlite_path(settings)
    if not Path(path).is_file():
        raise PortError(f"no SQLite database at {path}")
    if open_elsewhere(path):
        raise PortError(f"{path} is open in another process: stop the server before porting its database")
    return path


Progress = Callable[[str, int], None]


async def port_to_postgres(
    settings: DatabaseSettings,
    dsn: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    timeout: float = 10.0,
) -> PortReport:
    """Copy the SQLite database of ``settings`` into the empty PostgreSQL database
    ``dsn`` (see the module's docstring); ``progress(table, rows)`` is called as each
    table is copied. Raises PortError (nothing written) or DatabaseError (unreachable)."""
    if batch_size < 1:
        raise PortError("the batch size must be at least 1")
    path = await asyncio.to_thread(_idle_source, settings)
    expected = latest_version()
    with _open_source(path) as source:
        version = source.version()
        if version < expected:
            raise PortError(
                f"the SQLite database is at schema version {version} and this homeserver's is "
                f"{expected}: run `homeserver migrate` on it first"
            )
        if version > expected:
            raise PortError(
                f"the SQLite database is at schema version {version}, newer than this homeserver's "
                f"({expected}): port it with the homeserver that wrote it"
            )
        tables = source.tables()
        async with one_transaction(dsn, timeout) as target:
            try:
                report = await _port(source, target, tables, version, batch_size, progress)
            except (PortError, DatabaseError):
                raise
            except Exception as e:
                raise PortError(f"writing the PostgreSQL database failed, nothing was kept: "
                                f"{type(e).__name__}: {first_line(e)}") from None
        return report


async def _port(
    source: _Source,
    target: OneTransaction,
    tables: dict[str, list[str]],
    version: int,
    batch_size: int,
    progress: Progress | None,
) -> PortReport:
    # 1. The target holds none of our tables.
    present = await _our_tables_on(target, {t.lower() for t in tables} | {MIGRATIONS_TABLE})
    if present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise PortError(f"the PostgreSQL database is not empty (it has {shown}): port-db writes "
                        "only into an empty database")
    # 2. The schema, by the ordinary migrations, to the source's version.
    await migrate(target)
    if (reached := await current_version(target)) != version:
        raise PortError(f"the PostgreSQL schema reached version {reached}, the SQLite one is at {version}")
    # 3. Every source table and column has its counterpart.
    target_columns = await _target_columns(target)
    plan: dict[str, tuple[list[str], list[str], list[str]]] = {}  # source columns, target columns, types
    for table, columns in tables.items():
        have = target_columns.get(table.lower())
        if have is None:
            raise PortError(f"table {table} of the SQLite database has no counterpart in the PostgreSQL schema")
        missing = [c for c in columns if c.lower() not in have]
        if missing:
            raise PortError(f"column {table}.{missing[0]} of the SQLite database has no counterpart "
                            "in the PostgreSQL schema")
        plan[table] = (columns, [c.lower() for c in columns], [have[c.lower()] for c in columns])
    # 4. An order that satisfies foreign keys; rows a migration may have written on the
    # target are the source's to give (removed in the reverse order).
    by_lower = {t.lower(): t for t in tables}
    order = copy_order(list(by_lower), await _foreign_keys(target))
    for lower in reversed(order):
        await target.execute(f"DELETE FROM {_ident(lower)}")
    # 5. Copy.
    for lower in order:
        table = by_lower[lower]
        columns, target_names, types = plan[table]
        copied = 0
        for batch in source.batches(table, columns, batch_size):
            await target.copy_rows(lower, target_names, convert_rows(table, columns, types, batch))
            copied += len(batch)
        if progress is not None:
            progress(table, copied)
    # The search index is rebuilt from the events, not copied (storage/search.py).
    await target.execute(f"DELETE FROM {DERIVED_TABLE}")
    await target.execute(REBUILD_POSTGRES_INDEX)
    # 6. Sequences past every key given so far.
    sequences = await _reset_sequences(target, source.allocated())
    # 7. Row counts, table by table, before anything is committed.
    counts = [
        TableCount(table, source.count(table),
                   int(await target.fetchval(f"SELECT COUNT(*) FROM {_ident(table.lower())}")))
        for table in sorted(tables)
    ]
    if source.has_table(DERIVED_TABLE):
        counts.append(TableCount(DERIVED_TABLE, source.count(DERIVED_TABLE),
                                 int(await target.fetchval(f"SELECT COUNT(*) FROM {DERIVED_TABLE}"))))
    if any(c.source != c.target for c in counts):
        raise CountMismatchError(counts)
    return PortReport(version, counts, sequences)
