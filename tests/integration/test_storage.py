"""The database interface and migrations, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeserver.storage.database import Database
from homeserver.storage.migrations import (
    MIGRATIONS_DIR,
    SchemaTooNewError,
    current_version,
    discover,
    migrate,
)


async def test_migrations_apply_once(db: Database) -> None:
    applied = await migrate(db)
    expected = [m.version for m in discover(db.engine)]
    assert applied == expected and applied[0] == 1
    assert await migrate(db) == []  # twice changes nothing
    assert await current_version(db) == expected[-1]
    rows = await db.fetchall("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == expected


async def test_database_newer_than_code_refuses(db: Database) -> None:
    await migrate(db)
    await db.execute(
        "INSERT INTO schema_migrations (version, name, applied_ts) VALUES (?, ?, ?)",
        9999, "from_the_future", 0,
    )
    with pytest.raises(SchemaTooNewError, match="9999"):
        await migrate(db)


async def test_engine_specific_migration_files(db: Database, tmp_path: Path) -> None:
    (tmp_path / "0001_base.sql").write_text("CREATE TABLE t (x INTEGER);\n")
    (tmp_path / "0002_extra.sql").write_text("CREATE TABLE generic_only (x INTEGER);\n")
    (tmp_path / f"0002_extra.{db.engine}.sql").write_text(
        "CREATE TABLE specific (x INTEGER);\nINSERT INTO specific (x) VALUES (7);\n"
    )
    assert await migrate(db, tmp_path) == [1, 2]
    assert await db.fetchval("SELECT x FROM specific") == 7
    with pytest.raises(Exception):  # noqa: B017 - either engine's "no such table"
        await db.fetchval("SELECT x FROM generic_only")


async def test_failed_migration_leaves_nothing(db: Database, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (x INTEGER);\n")
    (tmp_path / "0002_broken.sql").write_text(
        "CREATE TABLE half (x INTEGER);\nTHIS IS NOT SQL;\n"
    )
    with pytest.raises(Exception):  # noqa: B017 - the engine's syntax error
        await migrate(db, tmp_path)
    assert await current_version(db) == 1
    # the broken migration's first statement was rolled back with it
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half (x INTEGER);\n")
    assert await migrate(db, tmp_path) == [2]


async def test_transaction_commit_and_rollback(db: Database) -> None:
    await db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "a", 1)
        await conn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "b", 2)
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "c", 3)
            raise RuntimeError("boom")
    rows = await db.fetchall("SELECT k, v FROM kv ORDER BY k")
    assert rows == [("a", 1), ("b", 2)]
    assert await db.execute("UPDATE kv SET v = v + ? WHERE k <> ?", 10, "zzz") == 2
    assert await db.fetchone("SELECT v FROM kv WHERE k = ?", "b") == (12,)
    assert await db.fetchone("SELECT v FROM kv WHERE k = ?", "nope") is None
    await db.executemany("INSERT INTO kv (k, v) VALUES (?, ?)", [("d", 4), ("e", 5)])
    assert await db.fetchval("SELECT COUNT(*) FROM kv") == 4


def test_shipped_migrations_are_numbered_in_order() -> None:
    names = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    versions = sorted({int(n[:4]) for n in names})
    assert versions == list(range(1, len(versions) + 1))
