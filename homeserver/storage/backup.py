"""Backing up the database (``homeserver backup``): on SQLite a consistent snapshot made
with SQLite's online backup API, while the server runs; on PostgreSQL the ``pg_dump``
and ``pg_restore`` commands to run, since the database server is the one to dump itself.

The snapshot is taken in one step, inside one read transaction: in WAL mode the server's
writers go on meanwhile and the copy is the database as of one commit. It is then turned
into a single self-contained file (rollback journal, no -wal beside it) and checked with
``PRAGMA integrity_check`` before it is reported.
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from homeserver.storage.porting import DatabaseSettings

SNAPSHOT_NAME = "database.sqlite"
DUMP_NAME = "database.pgdump"


class BackupError(Exception):
    """The database could not be backed up; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class SqliteSnapshot:
    """A snapshot written and checked: ``path`` in the backup, ``source`` the live file."""

    path: Path
    source: Path
    size: int
    tables: int

    def restore_lines(self) -> list[str]:
        """Shell lines that put the snapshot back in place of the live file (the server
        stopped): its -wal and -shm go first, or SQLite would replay the old log onto it."""
        original = self.source.resolve()
        target = shlex.quote(str(original))
        return [
            f"rm -f {shlex.quote(str(original) + '-wal')} {shlex.quote(str(original) + '-shm')}",
            f"install -m 600 {shlex.quote(self.path.name)} {target}",
        ]


@dataclass(frozen=True, slots=True)
class PostgresDump:
    """The commands that dump the PostgreSQL database into the backup and restore it."""

    dump_command: str
    restore_command: str
    password_left_out: bool


def backup_database(settings: DatabaseSettings, directory: Path) -> SqliteSnapshot | PostgresDump:
    """Back up the config's database into ``directory`` (which exists, private): a
    snapshot on SQLite, the commands to run on PostgreSQL."""
    if settings.engine == "sqlite":
        return snapshot_sqlite(Path(settings.path), directory / SNAPSHOT_NAME)
    if settings.engine == "postgres" and settings.dsn:
        dsn, hidden = dsn_without_password(settings.dsn)
        dump = directory / DUMP_NAME
        return PostgresDump(
            dump_command=shlex.join(["pg_dump", "--format=custom", f"--file={dump}", f"--dbname={dsn}"]),
            restore_command=shlex.join(
                ["pg_restore", "--clean", "--if-exists", "--no-owner", f"--dbname={dsn}", DUMP_NAME]
            ),
            password_left_out=hidden,
        )
    raise BackupError(f"cannot back up a {settings.engine} database")


def snapshot_sqlite(source: Path, target: Path) -> SqliteSnapshot:
    """Copy the SQLite database ``source`` into the new file ``target`` (0600) through the
    backup API, make it a single file, and check its integrity."""
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise BackupError(f"cannot create {target}: {e.strerror or e}") from None
    os.close(fd)
    uri = "file:" + quote(str(source.resolve())) + "?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # pages=-1: every page in one step, one read transaction
                dst.execute("PRAGMA journal_mode=DELETE").fetchall()
                verdict = [row[0] for row in dst.execute("PRAGMA integrity_check").fetchall()]
                tables = int(dst.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0])
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as e:
        raise BackupError(f"cannot snapshot the SQLite database {source}: {e}") from None
    if verdict != ["ok"]:
        raise BackupError(f"the snapshot {target} fails its integrity check: {'; '.join(verdict[:3])}")
    return SqliteSnapshot(target, source, target.stat().st_size, tables)


_KEYWORD_PASSWORD = re.compile(r"(^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def dsn_without_password(dsn: str) -> tuple[str, bool]:
    """``dsn`` with its password removed (URL or ``key=value`` form), and whether it had
    one: printed commands never show it (PGPASSWORD or ~/.pgpass give it to libpq)."""
    if "://" not in dsn:
        stripped = _KEYWORD_PASSWORD.sub(r"\1", dsn).strip()
        return " ".join(stripped.split()), stripped != dsn.strip()
    parts = urlsplit(dsn)
    hidden = False
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = userinfo.split(":", 1)[0] + "@" + hostport
        hidden = True
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if k != "password"]
    hidden = hidden or len(kept) != len(query)
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), parts.fragment)), hidden
