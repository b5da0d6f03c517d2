"""What an operator's machine keeps of the server is the operator's alone: the SQLite
database (and its write-ahead log) is created 0600 in a 0700 directory, generate-config
writes its config 0600 in a 0700 data directory; and at DEBUG no SQL parameter (a token
hash, a password hash) reaches the log (both engines)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from homeserver.cli import main as cli_main
from homeserver.storage.users import token_hash
from tests.clients import nio_user, raw
from tests.conftest import DatabaseFactory
from tests.servers import make_config, running_server

V3 = "/_matrix/client/v3"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_database_and_data_files_are_private(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    old_umask = os.umask(0o022)  # a usual umask: what is private is so by the server's doing
    try:
        settings = await db_factory.new_settings()
        sqlite_path = tmp_path / "fresh" / "homeserver.sqlite"
        if settings["engine"] == "sqlite":
            settings = {"engine": "sqlite", "path": str(sqlite_path)}
        config = make_config(tmp_path / "hs", settings, test_ca)
        async with running_server(config) as server, nio_user(server, "alice") as alice:
            status, _ = await raw(server, "GET", f"{V3}/account/whoami", token=alice.access_token)
            assert status == 200
            if settings["engine"] == "sqlite":
                assert mode(sqlite_path.parent) == 0o700
                for suffix in ("", "-wal", "-shm"):
                    path = Path(str(sqlite_path) + suffix)
                    assert mode(path) == 0o600, (path, oct(mode(path)))

        data = tmp_path / "generated"
        assert cli_main(["generate-config", "--server-name", "localhost:8448", "--data-dir", str(data)]) == 0
        assert mode(data) == 0o700
        assert mode(data / "homeserver.yaml") == 0o600
        assert mode(data / "signing.key") == 0o600
        # Rewritten with --force: private again.
        os.chmod(data / "homeserver.yaml", 0o644)
        assert cli_main(["generate-config", "--server-name", "localhost:8448", "--data-dir", str(data),
                         "--force"]) == 0
        assert mode(data / "homeserver.yaml") == 0o600
    finally:
        os.umask(old_umask)


async def test_sql_parameters_are_not_logged_at_debug(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server:
        caplog.set_level(logging.DEBUG)
        async with nio_user(server, "alice") as alice:
            status, _ = await raw(server, "GET", f"{V3}/account/whoami", token=alice.access_token)
            assert status == 200
            secret = token_hash(alice.access_token)
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert caplog.records  # DEBUG was on
        assert secret not in logged
        assert alice.user_id not in "\n".join(r.getMessage() for r in caplog.records if r.name == "aiosqlite")
