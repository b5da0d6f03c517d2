"""Versioned schema migrations: the package data ``homeserver/storage/schema/NNNN_name.sql``,
applied in order and recorded in ``schema_migrations``.

A version has a shared file ``NNNN_name.sql``, engine files ``NNNN_name.postgres.sql`` /
``NNNN_name.sqlite.sql``, or both: the shared file runs first, then the one of the engine
in use (additive, so an engine file holds only what differs between the engines). The
files are read through ``importlib.resources``, so an installed package (not only a source
tree) finds them. Each migration runs in one transaction together with the row that
records it, so applying twice changes nothing, and a database that records a version newer
than the code knows refuses to start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from homeserver.storage.database import Database, DatabaseError
from homeserver.util.clock import now_ms

MIGRATIONS_DIR: Traversable = resources.files("homeserver.storage").joinpath("schema")
ENGINES = ("sqlite", "postgres")
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<engine>sqlite|postgres))?\.sql$")


class MissingMigrationsError(DatabaseError):
    """The package holds no migration scripts (installed without its package data)."""


class SchemaTooNewError(DatabaseError):
    """The database was migrated by a newer version of the code."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    scripts: tuple[Traversable, ...]  # the shared file (if any), then this engine's (if any)

    def read(self) -> list[str]:
        return [script.read_text(encoding="utf-8") for script in self.scripts]


def discover(engine: str, directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations for ``engine`` in version order. Every version found is one
    migration on both engines (with no script for an engine that has nothing to do), so
    both record the same versions under the same names."""
    if engine not in ENGINES:
        raise DatabaseError(f"unknown database engine {engine!r}")
    names: dict[int, str] = {}
    files: dict[tuple[int, str | None], Traversable] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        m = _NAME.match(entry.name)
        if m is None:
            raise DatabaseError(f"migration file with a bad name: {entry.name}")
        version = int(m.group("version"))
        if names.setdefault(version, m.group("name")) != m.group("name"):
            raise DatabaseError(f"migration {version:04d} has files under two names: {entry.name}")
        files[(version, m.group("engine"))] = entry
    migrations = []
    for version in sorted(names):
        scripts = tuple(files[key] for key in ((version, None), (version, engine)) if key in files)
        migrations.append(Migration(version, names[version], scripts))
    return migrations


async def current_version(db: Database) -> int:
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
    )
    value = await db.fetchval("SELECT MAX(version) FROM schema_migrations")
    return int(value) if value is not None else 0


async def migrate(db: Database, directory: Traversable = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations in order; return the versions applied."""
    migrations = discover(db.dialect.name, directory)
    if not migrations:
        # A package installed without its data would otherwise call an empty schema "up to date".
        raise MissingMigrationsError(
            f"no schema migrations found in {directory}: the package is installed without its "
            "data files; reinstall it from its wheel or source tree (docs/deploy.md), not a copy of "
            "the .py files"
        )
    latest = migrations[-1].version
    current = await current_version(db)
    if current > latest:
        raise SchemaTooNewError(
            f"the database schema is at version {current} but this homeserver knows only up to "
            f"{latest}: upgrade the homeserver or use another database"
        )
    applied: list[int] = []
    for mig in migrations:
        if mig.version <= current:
            continue
        scripts = mig.read()
        async with db.transaction() as conn:
            # Re-check inside the transaction: another process may have applied it.
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = ?", mig.version
            )
            if done:
                continue
            for script in scripts:
                await conn.executescript(script)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_ts) VALUES (?, ?, ?)",
                mig.version,
                mig.name,
                now_ms(),
            )
        applied.append(mig.version)
    return applied
