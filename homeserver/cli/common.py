"""What every command shares: the one-line error, loading the config, opening its database
and writing private files."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from homeserver.config import Config, ConfigError, load_config
from homeserver.storage.database import Database, open_database


class CliError(Exception):
    """A failure reported as one line and exit status 1."""


def load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(f"invalid config: {e}") from None


@asynccontextmanager
async def config_database(config: Config, *, max_size: int = 2) -> AsyncIterator[Database]:
    """The config's database, opened for a command (a small pool) and closed after it.
    A ``DatabaseError`` (unreachable server, bad file) propagates; ``main`` reports it."""
    db = await open_database(
        config.database.engine,
        path=config.database.path,
        dsn=config.database.dsn,
        sqlite_sync=config.database.sqlite_sync,
        min_size=1,
        max_size=max_size,
        timeout=config.database.connect_timeout,
    )
    try:
        yield db
    finally:
        await db.close()


def private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) with the new directory itself 0700; an existing
    directory is kept as it is, with a warning when others may read it."""
    if path.is_dir():
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"warning: {path} is accessible to other users; `chmod 700 {path}` keeps the "
                  "database and keys private", file=sys.stderr)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by the owner only (0600), also when it existed (--force)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
