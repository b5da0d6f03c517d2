"""``homeserver backup``: on SQLite a snapshot taken while the server writes, which opens,
passes its integrity check, holds what was written before, and restores (RESTORE.txt) to
a server that still knows its user and room; the key and config copied 0600 into a new
0700 directory; a non-empty directory refused. On PostgreSQL: key and config copied, and
the printed pg_dump command, run, dumps our tables, which RESTORE.txt's pg_restore puts
back."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest
from nio import AsyncClient, AsyncClientConfig, LoginResponse, RoomCreateResponse, RoomSendResponse

from homeserver.cli import main
from tests.clients import base_url, eventually, msg, nio_user, raw
from tests.conftest import create_pg_database, drop_pg_database
from tests.procs import write_config
from tests.servers import make_config, running_server

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse battery"
HS = [sys.executable, "-m", "homeserver"]


def hs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HS, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, check=True, timeout=120, capture_output=True, text=True)


def same_bytes(a: Path | str, b: Path | str) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


def lose(db_path: Path) -> None:
    """The SQLite database gone, with its -wal and -shm."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def login(server: object, user_id: str) -> AsyncClient:
    client = AsyncClient(base_url(server), user=user_id,  # type: ignore[arg-type]
                         config=AsyncClientConfig(store_sync_tokens=False, encryption_enabled=False))
    resp = await client.login(PASSWORD)
    assert isinstance(resp, LoginResponse), resp
    return client


async def test_sqlite_backup_while_the_server_writes_then_restore(
    tmp_path: Path, test_ca: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hs"
    db_path = data / "homeserver.db"
    config = make_config(data, {"engine": "sqlite", "path": str(db_path)}, test_ca)
    config_file = write_config(config, data / "homeserver.yaml")
    out = tmp_path / "backups" / "first"
    async with running_server(config) as server, nio_user(server, "alice") as alice:
        created = await alice.room_create(name="Backed up")
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        before = []
        for i in range(5):
            sent = await alice.room_send(room, "m.room.message", msg(f"before {i}"))
            assert isinstance(sent, RoomSendResponse), sent
            before.append(sent.event_id)

        # A writer keeps sending while the backup runs (on a thread: the server's loop goes on).
        sent_during: list[str] = []
        stop = asyncio.Event()

        async def writer() -> None:
            while not stop.is_set():
                resp = await alice.room_send(room, "m.room.message", msg(f"during {len(sent_during)}"))
                assert isinstance(resp, RoomSendResponse), resp
                sent_during.append(resp.event_id)

        task = asyncio.create_task(writer())
        try:
            async def writing() -> bool:
                return len(sent_during) >= 2
            await eventually(writing)
            started_at = len(sent_during)
            status = await asyncio.to_thread(main, ["backup", "-c", str(config_file), "-o", str(out)])

            async def still_writing() -> bool:
                return len(sent_during) > started_at + 2
            await eventually(still_writing)
        finally:
            stop.set()
            await task
        assert status == 0
        alice_id = alice.user_id

    printed = capsys.readouterr().out
    assert "integrity check ok" in printed and "database.sqlite" in printed
    # A private directory of private files; the snapshot a single file.
    assert mode(out) == 0o700
    names = {p.name for p in out.iterdir()}
    assert names == {"database.sqlite", "config.yaml", "signing.key", "tls.crt", "tls.key", "RESTORE.txt"}
    assert all(mode(out / name) == 0o600 for name in names)
    assert same_bytes(out / "signing.key", config.signing_key_path)
    assert same_bytes(out / "config.yaml", config_file)
    # The snapshot: whole, and holding what was written before it.
    with closing(sqlite3.connect(out / "database.sqlite")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        users = {r[0] for r in conn.execute("SELECT user_id FROM users")}
        events = {r[0] for r in conn.execute("SELECT event_id FROM events")}
    assert alice_id in users
    assert set(before) <= events
    assert not (out / "database.sqlite-wal").exists()

    # Restore: the server stopped, its database lost; RESTORE.txt puts the files back.
    lose(db_path)
    run("sh", "RESTORE.txt", cwd=out)
    assert mode(db_path) == 0o600
    async with running_server(config) as server:
        alice2 = await login(server, alice_id)
        try:
            status, body = await raw(server, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=100",
                                     token=alice2.access_token)
            assert status == 200
            bodies = {e["content"].get("body") for e in body["chunk"]}
            assert {f"before {i}" for i in range(5)} <= bodies
        finally:
            await alice2.close()


def test_backup_refuses_an_output_that_is_not_empty(tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    data = tmp_path / "hs"
    config = make_config(data, {"engine": "sqlite", "path": str(data / "homeserver.db")}, test_ca)
    config_file = write_config(config, data / "homeserver.yaml")
    assert main(["migrate", "-c", str(config_file)]) == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    for target in (out, out / "keep"):
        result = hs("backup", "-c", str(config_file), "-o", str(target))
        assert result.returncode == 1, result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "is not empty" in hs("backup", "-c", str(config_file), "-o", str(out)).stderr
    assert [p.name for p in out.iterdir()] == ["keep"] and (out / "keep").read_text() == "mine"
    # A failure leaves nothing behind that could pass for a backup.
    missing = make_config(tmp_path / "other", {"engine": "sqlite", "path": str(tmp_path / "none.db")}, test_ca)
    result = hs("backup", "-c", str(write_config(missing, tmp_path / "other.yaml")), "-o", str(tmp_path / "new"))
    assert result.returncode == 1 and "no SQLite database" in result.stderr
    assert not (tmp_path / "new").exists()
    # An empty directory is taken, and made private.
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    empty.chmod(0o755)
    assert hs("backup", "-c", str(config_file), "-o", str(empty)).returncode == 0
    assert mode(empty) == 0o700 and (empty / "database.sqlite").is_file()


async def test_postgres_backup_copies_key_and_config_and_prints_a_working_pg_dump(
    tmp_path: Path, test_ca: tuple[Path, Path], postgres_admin_dsn: str
) -> None:
    # pg_dump is installed on the machines that run these tests: its absence is a failure.
    assert shutil.which("pg_dump") and shutil.which("pg_restore"), "pg_dump and pg_restore must be installed"
    dsn = await create_pg_database(postgres_admin_dsn)
    try:
        data = tmp_path / "hs"
        config = make_config(data, {"engine": "postgres", "dsn": dsn}, test_ca)
        config_file = write_config(config, data / "homeserver.yaml")
        out = tmp_path / "backup"
        async with running_server(config) as server, nio_user(server, "alice") as alice:
            alice_id = alice.user_id
            result = hs("backup", "-c", str(config_file), "-o", str(out))
        assert result.returncode == 0, result.stderr
        names = {p.name for p in out.iterdir()}
        assert names == {"config.yaml", "signing.key", "tls.crt", "tls.key", "RESTORE.txt"}
        assert mode(out) == 0o700 and all(mode(out / name) == 0o600 for name in names)
        assert same_bytes(out / "signing.key", config.signing_key_path)

        # The printed command names our database and writes the dump into the backup.
        dump_line = next(line.strip() for line in result.stdout.splitlines() if line.strip().startswith("pg_dump "))
        database = dsn.rsplit("/", 1)[1]
        assert f"/{database}" in dump_line and str(out / "database.pgdump") in dump_line
        run(*shlex.split(dump_line))
        listing = run("pg_restore", "--list", str(out / "database.pgdump")).stdout
        for table in ("events", "users", "schema_migrations", "current_state"):
            assert f"TABLE public {table} " in listing, table

        # RESTORE.txt's pg_restore line puts the lost rows back.
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("DELETE FROM users")
        finally:
            await conn.close()
        restore_line = next(line for line in (out / "RESTORE.txt").read_text().splitlines()
                            if line.startswith("pg_restore "))
        run(*shlex.split(restore_line), cwd=out)
        conn = await asyncpg.connect(dsn)
        try:
            assert [r[0] for r in await conn.fetch("SELECT user_id FROM users")] == [alice_id]
        finally:
            await conn.close()
    finally:
        await drop_pg_database(postgres_admin_dsn, dsn)
