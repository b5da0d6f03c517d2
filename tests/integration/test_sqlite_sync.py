"""``database.sqlite_sync`` (SQLite only): with "full", a /send is acknowledged only once
its inbox transaction is on disk (the write-ahead log synced; the door's side connection
otherwise runs NORMAL), the worker's group commits are synced before anything waiting for
them is told, and every commit of the main connection is synced (FULL); with "normal" (the
default) none of that. Real servers on loopback, a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeserver.storage.database import SqliteDatabase
from tests.remote import fake_remote
from tests.servers import make_config, running_server

WAIT = 10.0


@pytest.mark.parametrize("sync", ["normal", "full"])
async def test_a_send_is_synced_before_its_ack_only_in_full_mode(
    sync: str, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    settings = {"engine": "sqlite", "path": str(tmp_path / "hs.sqlite"), "sqlite_sync": sync}
    config = make_config(tmp_path / "hs", settings, test_ca)
    assert config.database.sqlite_sync == sync
    async with fake_remote(test_ca, tmp_path / "remote") as remote:
        room = remote.room()
        room.create_room()
        async with running_server(config) as server:
            db = server.services.db
            assert isinstance(db, SqliteDatabase)
            # The main connection's own commits: FULL (2) or NORMAL (1).
            assert await db.fetchval("PRAGMA synchronous") == (2 if sync == "full" else 1)
            await room.teach(server)
            before = db.acknowledged_syncs
            for i in range(3):
                status, _ = await remote.send(server, [room.message(f"m{i}")])
                assert status == 200
            assert db.acknowledged_syncs - before == (3 if sync == "full" else 0)
            assert await server.services.inbound_worker.wait_idle(WAIT)
            # The worker's writes (group commits on the side connection) were synced too.
            assert (db.group_syncs > 0) == (sync == "full")
