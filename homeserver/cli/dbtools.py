"""Database tools: ``port-db`` (the SQLite database into an empty PostgreSQL one) and
``backup`` (the database, the signing key and the config into a new private directory).
docs/backup.md is the operator's guide to both, restore included."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from homeserver.cli.common import CliError, load, write_private
from homeserver.config import Config
from homeserver.storage.backup import (
    BackupError,
    PostgresDump,
    SqliteSnapshot,
    backup_database,
    dsn_without_password,
)
from homeserver.storage.porting import (
    DEFAULT_BATCH_SIZE,
    CountMismatchError,
    PortError,
    PortReport,
    TableCount,
    port_to_postgres,
)

RESTORE_NAME = "RESTORE.txt"

# ---------------------------------------------------------------------- port-db


def _print_counts(counts: list[TableCount], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    width = max((len(c.table) for c in counts), default=5)
    print(f"{'table':<{width}}  {'sqlite':>10}  {'postgres':>10}", file=out)
    for c in counts:
        mark = "" if c.source == c.target else "  MISMATCH"
        print(f"{c.table:<{width}}  {c.source:>10}  {c.target:>10}{mark}", file=out)


def _progress(table: str, rows: int) -> None:
    print(f"copied {table}: {rows} rows", flush=True)


def cmd_port_db(args: argparse.Namespace) -> int:
    config = load(args.config)
    try:
        report: PortReport = asyncio.run(
            port_to_postgres(config.database, args.to, batch_size=args.batch_size, progress=_progress,
                             timeout=config.database.connect_timeout)
        )
    except CountMismatchError as e:
        _print_counts(e.counts, sys.stderr)
        raise CliError(str(e)) from None
    except PortError as e:
        raise CliError(str(e)) from None
    print(f"schema version {report.schema_version}; row counts, checked before the commit:")
    _print_counts(report.counts)
    for table, column, next_value in report.sequences:
        print(f"sequence of {table}.{column}: next value {next_value}")
    print(f"ported {len(report.counts)} tables, {report.rows} rows: every table's row count matches.")
    dsn, hidden = dsn_without_password(args.to)
    print("\nNext: with the server still stopped, set the database section of "
          f"{args.config} to\n\n"
          "database:\n"
          "  engine: postgres\n"
          f"  dsn: \"{dsn}\"\n")
    if hidden:
        print("(the DSN's password is not printed: put it back in the dsn, or give it in ~/.pgpass)")
    print("then start the server. Keep the SQLite file until you are satisfied; the server no "
          "longer writes to it.")
    return 0


# ---------------------------------------------------------------------- backup


def _new_private_dir(path: Path) -> None:
    """``path`` as a new (or empty) directory only its owner can enter."""
    if path.exists():
        if not path.is_dir():
            raise CliError(f"{path} exists and is not a directory")
        if any(path.iterdir()):
            raise CliError(f"{path} is not empty: back up into a new directory")
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
        except OSError as e:
            raise CliError(f"cannot create {path}: {e.strerror or e}") from None
    os.chmod(path, 0o700)


def _copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` into the new file ``target``, readable by the owner only (0600)."""
    try:
        with source.open("rb") as src:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
    except OSError as e:
        raise CliError(f"cannot copy {source}: {e.strerror or e}") from None


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def _files_to_copy(config: Config, config_path: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name in the backup, original) for the config, the key and the TLS files the server
    keeps in its data_dir; and notes on what is left out."""
    files = [("config.yaml", config_path), ("signing.key", Path(config.signing_key_path))]
    notes = []
    fed = config.listeners.federation
    for name, label, value in (("tls.crt", "TLS certificate", fed.tls_certificate_path),
                               ("tls.key", "TLS private key", fed.tls_private_key_path)):
        if not value:
            continue
        path = Path(value)
        if not path.is_file():
            notes.append(f"not copied: {label} {path} (missing)")
        elif _inside(path, Path(config.data_dir)):
            files.append((name, path))
        else:
            notes.append(f"not copied: {label} {path} (outside data_dir: back it up where it is managed)")
    return files, notes


def cmd_backup(args: argparse.Namespace) -> int:
    config_path = Path(args.config).resolve()
    config = load(args.config)
    out = Path(args.output)
    files, notes = _files_to_copy(config, config_path)
    for _, path in files:
        if not path.is_file():
            raise CliError(f"cannot back up {path}: no such file")
    created = not out.exists()
    _new_private_dir(out)
    out = out.resolve()
    try:
        database, written = _write_backup(config, out, files)
    except BaseException:
        # Nothing half-made is left to pass for a backup: the directory was new or empty.
        for child in out.iterdir():
            child.unlink()
        if created:
            out.rmdir()
        raise
    _report(out, written, database, notes)
    return 0


def _write_backup(
    config: Config, out: Path, files: list[tuple[str, Path]]
) -> tuple[SqliteSnapshot | PostgresDump, list[tuple[Path, Path]]]:
    try:
        database = backup_database(config.database, out)
    except BackupError as e:
        raise CliError(str(e)) from None
    restore = [
        f"# Backup of {config.server_name}, made {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}.",
        "# To restore: stop the server, then run these lines from inside this directory",
        "# (`sh RESTORE.txt`); each puts a file back where it came from. docs/backup.md says more.",
        "set -e",
    ]
    written = []
    for name, source in files:
        _copy_private(source, out / name)
        written.append((out / name, source))
        restore.append(f"install -m 600 {shlex.quote(name)} {shlex.quote(str(source))}")
    if isinstance(database, SqliteSnapshot):
        restore.extend(database.restore_lines())
    else:
        restore.append("# The database: restore the dump made by pg_dump (it replaces what is there):")
        restore.append(database.restore_command)
    write_private(out / RESTORE_NAME, "\n".join(restore) + "\n")
    return database, written


def _report(out: Path, written: list[tuple[Path, Path]], database: SqliteSnapshot | PostgresDump,
            notes: list[str]) -> None:
    print(f"backup in {out} (0700; every file 0600):")
    if isinstance(database, SqliteSnapshot):
        print(f"  {database.path.name}: snapshot of {database.source} ({database.size} bytes, "
              f"{database.tables} tables, integrity check ok)")
    for path, source in written:
        print(f"  {path.name}: copy of {source}")
    print(f"  {RESTORE_NAME}: how to put each file back")
    for note in notes:
        print(note)
    if isinstance(database, PostgresDump):
        print("\nThe database is on PostgreSQL: dump it into the backup with\n\n"
              f"  {database.dump_command}\n")
        if database.password_left_out:
            print("(the DSN's password is not printed: give it in PGPASSWORD or ~/.pgpass)")
        print("and keep the dump with the other files; RESTORE.txt has the pg_restore command.")


def add_db_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "port-db", help="copy the SQLite database into an empty PostgreSQL database",
        description="Copy the SQLite database of CONFIG into the empty PostgreSQL database DSN: "
        "the schema by the ordinary migrations, then every table, in one transaction (a failure "
        "leaves the target empty), with the row counts compared table by table. Stop the server "
        "first (a server holding the SQLite file open is detected and refused). The SQLite "
        "database must be at this homeserver's schema version (`homeserver migrate` first). "
        "Then set database.engine: postgres and database.dsn in the config. See docs/backup.md.",
    )
    p.add_argument("-c", "--config", required=True, help="config file (database.engine: sqlite)")
    p.add_argument("--to", required=True, metavar="POSTGRES_DSN",
                   help="the empty target, e.g. postgresql://homeserver@127.0.0.1:5432/homeserver")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"rows copied per batch (default {DEFAULT_BATCH_SIZE})")
    p.set_defaults(func=cmd_port_db)

    p = sub.add_parser(
        "backup", help="back up the database, signing key and config into a new directory",
        description="Write into the new (or empty) directory OUTPUT, 0700 with files 0600: the "
        "config, the signing key, the TLS certificate and key when they live in data_dir, and on "
        "SQLite a snapshot of the database (SQLite's backup API: safe while the server runs; "
        "checked with PRAGMA integrity_check). On PostgreSQL it prints the pg_dump command to "
        "run. RESTORE.txt in OUTPUT lists the commands that put each file back: stop the "
        "server, then run them from inside OUTPUT (`sh RESTORE.txt`). See docs/backup.md.",
    )
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="a new or empty directory")
    p.set_defaults(func=cmd_backup)
