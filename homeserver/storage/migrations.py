"""Versioned schema migrations: ``migrations/NNNN_name.sql`` applied in order, recorded.

A file may have engine-specific variants ``NNNN_name.sqlite.sql`` / ``NNNN_name.postgres.sql``
which take the place of the plain one for that engine. Each migration runs in one
transaction together with the row that records it, so applying twice changes nothing, and
a database that records a version newer than the code knows refuses to start.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from homeserver.storage.database import Database, DatabaseError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<engine>sqlite|postgres))?\.sql$")


class SchemaTooNewError(DatabaseError):
    """The database was migrated by a newer version of the code."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path


def discover(engine: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    chosen: dict[int, Migration] = {}
    specific: set[int] = set()
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if m is None:
            raise DatabaseError(f"migration file with a bad name: {path.name}")
        if m.group("engine") not in (None, engine):
            continue
        version = int(m.group("version"))
        if m.group("engine"):
            specific.add(version)
            chosen[version] = Migration(version, m.group("name"), path)
        elif version not in specific:
            chosen[version] = Migration(version, m.group("name"), path)
    return [chosen[v] for v in sorted(chosen)]


async def current_version(db: Database) -> int:
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
    )
    value = await db.fetchval("SELECT MAX(version) FROM schema_migrations")
    return int(value) if value is not None else 0


async def migrate(db: Database, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations in order; return the versions applied."""
    migrations = discover(db.engine, directory)
    latest = migrations[-1].version if migrations else 0
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
        script = mig.path.read_text(encoding="utf-8")
        async with db.transaction() as conn:
            # Re-check inside the transaction: another process may have applied it.
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = ?", mig.version
            )
            if done:
                continue
            await conn.executescript(script)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_ts) VALUES (?, ?, ?)",
                mig.version,
                mig.name,
                int(time.time() * 1000),
            )
        applied.append(mig.version)
    return applied
