"""``homeserver port-db``: a SQLite server's database, with users, a room shared over
federation, receipts and account data, is copied into an empty PostgreSQL database; the
server restarted on it (same key, name and port) still knows its users, rooms and
messages and still federates both ways. And the refusals: a target that is not empty, a
config not on SQLite, a source at another schema version or open in a running server, a
bad DSN; a failure half-way leaves the target empty."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from nio import AsyncClient, AsyncClientConfig, JoinResponse, LoginResponse, RoomCreateResponse, RoomSendResponse

from homeserver.cli import main
from homeserver.storage.database import open_database
from homeserver.storage.migrations import MIGRATIONS_DIR, migrate
from tests.clients import base_url, msg, nio_user, raw, sync_until, timeline_bodies
from tests.conftest import create_pg_database, drop_pg_database
from tests.procs import server_process, wait_ready, write_config
from tests.servers import free_port, make_config, running_server

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse battery"
HS = [sys.executable, "-m", "homeserver"]


@pytest.fixture
async def pg_target(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (dropped after the test)."""
    dsn = await create_pg_database(postgres_admin_dsn)
    try:
        yield dsn
    finally:
        await drop_pg_database(postgres_admin_dsn, dsn)


def sqlite_counts(path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as conn:
        # (FTS5's own tables behind the search index have no PostgreSQL counterpart.)
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            if not r[0].startswith("event_search_fts")]
        return {n: conn.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}


async def pg_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        names = [r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
        return {n: await conn.fetchval(f'SELECT COUNT(*) FROM "{n}"') for n in names}
    finally:
        await conn.close()


async def pg_sequences(dsn: str) -> list[tuple[str, str, int]]:
    """(table, column, the value its sequence gives next) for every serial column."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, pg_get_serial_sequence(table_name, column_name) AS seq"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND pg_get_serial_sequence(table_name, column_name) IS NOT NULL")
        found = []
        for r in rows:
            last, called = await conn.fetchrow(f"SELECT last_value, is_called FROM {r['seq']}")
            found.append((r["table_name"], r["column_name"], last + 1 if called else last))
        assert found
        return found
    finally:
        await conn.close()


async def pg_max(dsn: str, table: str, column: str) -> int | None:
    conn = await asyncpg.connect(dsn)
    try:
        value: int | None = await conn.fetchval(f'SELECT MAX("{column}") FROM "{table}"')
        return value
    finally:
        await conn.close()


def left_behind(db: Path, suffix: str) -> bool:
    return Path(f"{db}{suffix}").exists()


def hs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HS, *args], capture_output=True, text=True, timeout=120)


def one_line_failure(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert needle in lines[0], lines[0]


async def migrated_sqlite(path: Path, directory: object = MIGRATIONS_DIR) -> None:
    db = await open_database("sqlite", path=str(path))
    try:
        await migrate(db, directory)  # type: ignore[arg-type]
    finally:
        await db.close()


async def test_port_db_round_trip_keeps_users_rooms_and_federation(
    tmp_path: Path, test_ca: tuple[Path, Path], postgres_admin_dsn: str, pg_target: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    b_dsn = await create_pg_database(postgres_admin_dsn)
    try:
        a_db = tmp_path / "a" / "homeserver.db"
        a_config = make_config(tmp_path / "a", {"engine": "sqlite", "path": str(a_db)}, test_ca)
        b_config = make_config(tmp_path / "b", {"engine": "postgres", "dsn": b_dsn}, test_ca)
        async with running_server(b_config) as b, nio_user(b, "bob") as bob:
            # A on SQLite: Alice creates a room, Bob joins over federation, both talk; a
            # receipt and account data on A.
            async with running_server(a_config) as a, nio_user(a, "alice") as alice:
                created = await alice.room_create(name="Ported", invite=[bob.user_id])
                assert isinstance(created, RoomCreateResponse), created
                room = created.room_id
                await sync_until(bob, lambda r: room in r.rooms.invite)
                assert isinstance(await bob.join(room), JoinResponse)
                sent = await bob.room_send(room, "m.room.message", msg("before the port, from b"))
                assert isinstance(sent, RoomSendResponse)
                assert isinstance(await alice.room_send(room, "m.room.message", msg("before the port, from a")),
                                  RoomSendResponse)
                got_a: list[str] = []
                await sync_until(alice, lambda r: bool(got_a.extend(timeline_bodies(r, room)))
                                 or "before the port, from b" in got_a)
                got_b: list[str] = []
                await sync_until(bob, lambda r: bool(got_b.extend(timeline_bodies(r, room)))
                                 or "before the port, from a" in got_b)
                status, _ = await raw(a, "POST", f"{V3}/rooms/{room}/receipt/m.read/{sent.event_id}",
                                      token=alice.access_token, json={})
                assert status == 200
                status, _ = await raw(a, "PUT", f"{V3}/user/{alice.user_id}/account_data/org.example.ported",
                                      token=alice.access_token, json={"kept": True})
                assert status == 200
                # A to-device message waiting for Alice's device, and a key backup.
                status, _ = await raw(a, "PUT", f"{V3}/sendToDevice/m.test/port1", token=alice.access_token,
                                      json={"messages": {alice.user_id: {alice.device_id: {"ported": 1}}}})
                assert status == 200
                status, _ = await raw(a, "POST", f"{V3}/room_keys/version", token=alice.access_token,
                                      json={"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}})
                assert status == 200
                status, _ = await raw(a, "PUT", f"{V3}/room_keys/keys/{room}/s1?version=1", token=alice.access_token,
                                      json={"first_message_index": 0, "forwarded_count": 0, "is_verified": False,
                                            "session_data": {"c": "x"}})
                assert status == 200
                alice_id, alice_token = alice.user_id, alice.access_token
            # A is stopped: port its database.
            before = sqlite_counts(a_db)
            for table in ("users", "access_tokens", "devices", "events", "current_state", "state_groups",
                          "state_group_entries", "event_edges", "event_auth", "rooms", "receipts",
                          "account_data", "federation_transactions", "outbound_destinations", "server_keys",
                          "to_device_stream", "to_device_inbox", "to_device_txns", "room_key_backup_versions",
                          "room_key_backup_keys"):
                assert before[table] > 0, table
            config_file = write_config(a_config, tmp_path / "a.yaml")
            status_code = await asyncio.to_thread(main, ["port-db", "-c", str(config_file), "--to", pg_target,
                                                         "--batch-size", "7"])
            out = capsys.readouterr().out
            assert status_code == 0, out
            assert "every table's row count matches" in out and "engine: postgres" in out
            after = await pg_counts(pg_target)
            assert {t: after[t] for t in before} == before
            # Every sequence gives keys above those copied (state groups, say).
            for table, column, next_value in await pg_sequences(pg_target):
                assert next_value > (await pg_max(pg_target, table, column) or 0), (table, column)

            # A again, on PostgreSQL, with the same key, name and federation port.
            a2_config = make_config(tmp_path / "a", {"engine": "postgres", "dsn": pg_target}, test_ca,
                                    fed_port=a_config.listeners.federation.port)
            assert a2_config.server_name == a_config.server_name
            async with running_server(a2_config) as a2:
                # The old access token still works, and so does the old password.
                status, body = await raw(a2, "GET", f"{V3}/account/whoami", token=alice_token)
                assert (status, body["user_id"]) == (200, alice_id)
                # The to-device message still waits; the backup is there; new messages get
                # positions past the ported ones.
                status, body = await raw(a2, "GET", f"{V3}/sync", token=alice_token)
                assert [e["content"] for e in body["to_device"]["events"]] == [{"ported": 1}]
                status, _ = await raw(a2, "PUT", f"{V3}/sendToDevice/m.test/port2", token=alice_token,
                                      json={"messages": {alice_id: {"*": {"ported": 2}}}})
                assert status == 200
                status, body = await raw(a2, "GET", f"{V3}/sync?since={body['next_batch']}", token=alice_token)
                assert [e["content"] for e in body["to_device"]["events"]] == [{"ported": 2}]
                status, body = await raw(a2, "GET", f"{V3}/room_keys/version", token=alice_token)
                assert (status, body["version"], body["count"]) == (200, "1", 1)
                alice2 = AsyncClient(base_url(a2), user=alice_id,
                                     config=AsyncClientConfig(store_sync_tokens=False, encryption_enabled=False))
                try:
                    assert isinstance(await alice2.login(PASSWORD), LoginResponse)
                    # The old room and its messages.
                    first = await alice2.sync(timeout=0)
                    assert room in first.rooms.join  # type: ignore[union-attr]
                    status, body = await raw(a2, "GET", f"{V3}/rooms/{room}/messages?dir=b&limit=50",
                                             token=alice2.access_token)
                    assert status == 200
                    bodies = [e["content"].get("body") for e in body["chunk"]]
                    assert "before the port, from a" in bodies and "before the port, from b" in bodies
                    status, body = await raw(a2, "GET", f"{V3}/user/{alice_id}/account_data/org.example.ported",
                                             token=alice2.access_token)
                    assert (status, body) == (200, {"kept": True})
                    # A state change (a new state group) and new messages federate both ways.
                    status, _ = await raw(a2, "PUT", f"{V3}/rooms/{room}/state/m.room.name/",
                                          token=alice2.access_token, json={"name": "Ported, renamed"})
                    assert status == 200
                    assert isinstance(await alice2.room_send(room, "m.room.message", msg("after the port, from a")),
                                      RoomSendResponse)
                    got_b = []
                    await sync_until(bob, lambda r: bool(got_b.extend(timeline_bodies(r, room)))
                                     or "after the port, from a" in got_b)
                    status, body = await raw(b, "GET", f"{V3}/rooms/{room}/state/m.room.name/", token=bob.access_token)
                    assert (status, body) == (200, {"name": "Ported, renamed"})
                    assert isinstance(await bob.room_send(room, "m.room.message", msg("after the port, from b")),
                                      RoomSendResponse)
                    got_a2: list[str] = []
                    await sync_until(alice2, lambda r: bool(got_a2.extend(timeline_bodies(r, room)))
                                     or "after the port, from b" in got_a2)
                finally:
                    await alice2.close()
    finally:
        await drop_pg_database(postgres_admin_dsn, b_dsn)


async def test_port_db_refuses_a_target_that_is_not_empty(tmp_path: Path, test_ca: tuple[Path, Path],
                                                          pg_target: str) -> None:
    source = tmp_path / "hs" / "homeserver.db"
    config = make_config(tmp_path / "hs", {"engine": "sqlite", "path": str(source)}, test_ca)
    await migrated_sqlite(source)
    # The target: a server's database already, with one user.
    target = await open_database("postgres", dsn=pg_target)
    try:
        await migrate(target)
        await target.execute("INSERT INTO users (user_id, password_hash, created_ts) VALUES (?, NULL, 1)",
                             "@someone:example.org")
    finally:
        await target.close()
    before = await pg_counts(pg_target)
    result = hs("port-db", "-c", str(write_config(config, tmp_path / "hs.yaml")), "--to", pg_target)
    one_line_failure(result, "is not empty")
    assert await pg_counts(pg_target) == before


async def test_port_db_refuses_other_configs_and_sources(tmp_path: Path, test_ca: tuple[Path, Path],
                                                         pg_target: str) -> None:
    # A config on PostgreSQL.
    pg_config = make_config(tmp_path / "pg", {"engine": "postgres", "dsn": pg_target}, test_ca)
    one_line_failure(hs("port-db", "-c", str(write_config(pg_config, tmp_path / "pg.yaml")), "--to", pg_target),
                     "database.engine is postgres")

    source = tmp_path / "hs" / "homeserver.db"
    config_file = write_config(make_config(tmp_path / "hs", {"engine": "sqlite", "path": str(source)}, test_ca),
                               tmp_path / "hs.yaml")
    # No SQLite file yet.
    one_line_failure(hs("port-db", "-c", str(config_file), "--to", pg_target), "no SQLite database")
    # A source at an older schema version: migrated with the first five migrations only.
    older = tmp_path / "older"
    older.mkdir()
    for entry in MIGRATIONS_DIR.iterdir():
        if entry.name.endswith(".sql") and int(entry.name[:4]) <= 5:
            (older / entry.name).write_text(entry.read_text(encoding="utf-8"))
    await migrated_sqlite(source, older)
    one_line_failure(hs("port-db", "-c", str(config_file), "--to", pg_target), "run `homeserver migrate`")
    # Bad DSNs (the source is fine now): one line each.
    await migrated_sqlite(source)
    one_line_failure(hs("port-db", "-c", str(config_file), "--to", "not a dsn://x"), "cannot connect to PostgreSQL")
    one_line_failure(hs("port-db", "-c", str(config_file), "--to", f"postgresql://postgres@127.0.0.1:{free_port()}/x"),
                     "cannot connect to PostgreSQL")
    assert await pg_counts(pg_target) == {}


async def test_port_db_failure_half_way_leaves_the_target_empty(tmp_path: Path, test_ca: tuple[Path, Path],
                                                               pg_target: str) -> None:
    source = tmp_path / "hs" / "homeserver.db"
    config_file = write_config(make_config(tmp_path / "hs", {"engine": "sqlite", "path": str(source)}, test_ca),
                               tmp_path / "hs.yaml")
    await migrated_sqlite(source)
    with closing(sqlite3.connect(source)) as conn:
        # Rows in a table copied before users, then a value PostgreSQL's bigint cannot hold
        # (SQLite keeps it: its columns are typed loosely).
        conn.execute("INSERT INTO account_data VALUES ('@a:x', '', 't', '{}', 1)")
        conn.execute("INSERT INTO users (user_id, password_hash, created_ts) VALUES ('@a:x', NULL, 'yesterday')")
        conn.commit()
    one_line_failure(hs("port-db", "-c", str(config_file), "--to", pg_target),
                     "users.created_ts: cannot store 'yesterday' as bigint")
    assert await pg_counts(pg_target) == {}

    # A table of the source that the PostgreSQL schema lacks.
    with closing(sqlite3.connect(source)) as conn:
        conn.execute("UPDATE users SET created_ts = 1")
        conn.execute("CREATE TABLE stray (x INTEGER)")
        conn.commit()
    one_line_failure(hs("port-db", "-c", str(config_file), "--to", pg_target),
                     "table stray of the SQLite database has no counterpart")
    assert await pg_counts(pg_target) == {}


async def test_port_db_refuses_while_the_server_runs(tmp_path: Path, test_ca: tuple[Path, Path],
                                                     pg_target: str) -> None:
    source = tmp_path / "hs" / "homeserver.db"
    client_port = free_port()
    config = make_config(tmp_path / "hs", {"engine": "sqlite", "path": str(source)}, test_ca,
                         extra={"listeners": {"client": {"bind": "127.0.0.1", "port": client_port}}})
    config_file = write_config(config, tmp_path / "hs.yaml")
    with server_process(config_file, tmp_path / "server.log") as proc:
        async with aiohttp.ClientSession() as s:
            await wait_ready(s, f"http://127.0.0.1:{client_port}/health", proc)
        one_line_failure(hs("port-db", "-c", str(config_file), "--to", pg_target),
                         "is open in another process: stop the server")
        proc.kill()  # a crash: the -wal and -shm stay behind, unlocked
        proc.wait(timeout=30)
    assert await pg_counts(pg_target) == {}
    assert left_behind(source, "-shm")
    # Stopped (even by a crash), the same database ports.
    result = hs("port-db", "-c", str(config_file), "--to", pg_target)
    assert result.returncode == 0, result.stderr
    assert "every table's row count matches" in result.stdout


async def test_port_db_never_gives_a_key_twice(tmp_path: Path, test_ca: tuple[Path, Path], pg_target: str) -> None:
    """A sequence goes past the highest key SQLite ever gave, not only past the rows left:
    a deleted row's key (an inbox entry processed, an invite's stream position a client
    holds) is not given again."""
    source = tmp_path / "hs" / "homeserver.db"
    config_file = write_config(make_config(tmp_path / "hs", {"engine": "sqlite", "path": str(source)}, test_ca),
                               tmp_path / "hs.yaml")
    await migrated_sqlite(source)
    with closing(sqlite3.connect(source)) as conn:
        for i in range(3):
            conn.execute("INSERT INTO inbox (origin, kind, body, received_ts) VALUES ('o', 'edu', '{}', ?)", (i,))
        conn.execute("DELETE FROM inbox WHERE id > 1")
        conn.commit()
    result = hs("port-db", "-c", str(config_file), "--to", pg_target)
    assert result.returncode == 0, result.stderr
    assert "sequence of inbox.id: next value 4" in result.stdout
    assert ("inbox", "id", 4) in await pg_sequences(pg_target)
