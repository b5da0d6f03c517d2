"""The database interface and migrations, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

import homeserver.storage
from homeserver.storage.database import Database, DatabaseError
from homeserver.storage.migrations import (
    MIGRATIONS_DIR,
    MissingMigrationsError,
    SchemaTooNewError,
    current_version,
    discover,
    migrate,
)


async def test_migrations_apply_once(db: Database) -> None:
    applied = await migrate(db)
    expected = [m.version for m in discover(db.dialect.name)]
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


async def test_engine_specific_migration_files_are_additive(db: Database, tmp_path: Path) -> None:
    other = "postgres" if db.dialect.name == "sqlite" else "sqlite"
    (tmp_path / "0001_base.sql").write_text("CREATE TABLE t (x INTEGER);\n")
    # shared first, then this engine's file (which may use what the shared one made)
    (tmp_path / "0002_extra.sql").write_text("CREATE TABLE shared (x INTEGER);\n")
    (tmp_path / f"0002_extra.{db.dialect.name}.sql").write_text(
        "CREATE TABLE specific (x INTEGER);\nINSERT INTO specific (x) VALUES (7);\n"
        "INSERT INTO shared (x) VALUES (8);\n"
    )
    (tmp_path / f"0002_extra.{other}.sql").write_text("THIS IS NOT SQL;\n")
    # a version with only the other engine's file is recorded here with nothing to run
    (tmp_path / f"0003_elsewhere.{other}.sql").write_text("THIS IS NOT SQL EITHER;\n")
    # a version with only this engine's file
    (tmp_path / f"0004_here.{db.dialect.name}.sql").write_text("CREATE TABLE here (x INTEGER);\n")
    assert await migrate(db, tmp_path) == [1, 2, 3, 4]
    assert await db.fetchval("SELECT x FROM specific") == 7
    assert await db.fetchval("SELECT x FROM shared") == 8
    assert await db.fetchval("SELECT COUNT(*) FROM here") == 0
    rows = await db.fetchall("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [tuple(r) for r in rows] == [(1, "base"), (2, "extra"), (3, "elsewhere"), (4, "here")]


def test_migration_file_names_checked(tmp_path: Path) -> None:
    (tmp_path / "0001_base.sql").write_text("")
    (tmp_path / "0001_other.sqlite.sql").write_text("")
    with pytest.raises(DatabaseError, match="two names"):
        discover("sqlite", tmp_path)
    (tmp_path / "0001_other.sqlite.sql").unlink()
    (tmp_path / "1_bad.sql").write_text("")
    with pytest.raises(DatabaseError, match="bad name"):
        discover("sqlite", tmp_path)


async def test_no_migrations_is_an_error_not_up_to_date(db: Database, tmp_path: Path) -> None:
    """A package installed without its data finds no scripts: that refuses to start rather
    than calling an empty schema up to date."""
    (tmp_path / "README").write_text("no scripts here")
    with pytest.raises(MissingMigrationsError, match="no schema migrations found"):
        await migrate(db, tmp_path)
    assert await current_version(db) == 0


def test_shipped_migrations_found_as_package_data() -> None:
    """The runner reads the migrations through importlib.resources, from the package."""
    assert Path(str(MIGRATIONS_DIR)) == Path(homeserver.storage.__file__).parent / "schema"
    assert str(resources.files("homeserver.storage").joinpath("schema")) == str(MIGRATIONS_DIR)
    for engine in ("sqlite", "postgres"):
        found = {m.version: (m.name, [s.name for s in m.scripts]) for m in discover(engine)}
        assert found == {
            1: ("server_keys", ["0001_server_keys.sql"]),
            2: ("events", ["0002_events.sql", f"0002_events.{engine}.sql"]),
            3: ("inbox", ["0003_inbox.sql", f"0003_inbox.{engine}.sql"]),
            4: ("outbound", ["0004_outbound.sql", f"0004_outbound.{engine}.sql"]),
            5: ("rooms", ["0005_rooms.sql", f"0005_rooms.{engine}.sql"]),
            6: ("users", ["0006_users.sql"]),
            7: ("aliases", ["0007_aliases.sql"]),
            8: ("account_data", ["0008_account_data.sql"]),
            9: ("redactions", ["0009_redactions.sql", f"0009_redactions.{engine}.sql"]),
            10: ("inbox_claims_in_memory", ["0010_inbox_claims_in_memory.sql"]),
            11: ("operators", ["0011_operators.sql"]),
            12: ("openid_and_timestamps", ["0012_openid_and_timestamps.sql"]),
            13: ("e2e_keys", ["0013_e2e_keys.sql"]),
            14: ("to_device_and_key_backup", ["0014_to_device_and_key_backup.sql"]),
            15: ("media", ["0015_media.sql"]),
            16: ("reports", [f"0016_reports.{engine}.sql"]),
            17: ("relations_search", ["0017_relations_search.sql", f"0017_relations_search.{engine}.sql"]),
            18: ("push", ["0018_push.sql"]),
            19: ("push_pass", ["0019_push_pass.sql"]),
        }


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
    names = sorted(p.name for p in MIGRATIONS_DIR.iterdir() if p.name.endswith(".sql"))
    versions = sorted({int(n[:4]) for n in names})
    assert versions == list(range(1, len(versions) + 1))
