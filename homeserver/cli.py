"""Command line: ``homeserver run | migrate | generate-config | generate-key | testbed``.

Every expected failure (bad config, bad key file, unreachable database) prints one line
to stderr and exits with status 1; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import stat
import sys
from pathlib import Path

from homeserver.config import Config, ConfigError, load_config
from homeserver.config_template import REGISTRATION_MODES, render
from homeserver.crypto.keys import (
    KeyFileError,
    generate_key_line,
    load_key_file,
    write_new_key_file,
)
from homeserver.crypto.tls import issue_certificate
from homeserver.events.identifiers import is_valid_server_name
from homeserver.logsetup import setup_logging
from homeserver.net.client import split_server_name
from homeserver.storage.database import DatabaseError, open_database
from homeserver.storage.migrations import migrate
from homeserver.testbed.commands import add_testbed_commands
from homeserver.testbed.state import TestbedError


class CliError(Exception):
    """A failure reported as one line and exit status 1."""


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(f"invalid config: {e}") from None


def _check_files(config: Config) -> None:
    try:
        load_key_file(config.signing_key_path)
    except KeyFileError as e:
        raise CliError(str(e)) from None
    fed = config.listeners.federation
    if fed.tls:
        for label, path in (("certificate", fed.tls_certificate_path), ("private key", fed.tls_private_key_path)):
            if path and not Path(path).is_file():
                raise CliError(f"TLS {label} file not found: {path}")


def _private_dir(path: Path) -> None:
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


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by the owner only (0600), also when it existed (--force)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def cmd_generate_config(args: argparse.Namespace) -> None:
    if not is_valid_server_name(args.server_name):
        raise CliError(f"{args.server_name!r} is not a valid server name")
    data_dir = Path(args.data_dir)
    _private_dir(data_dir)
    out = Path(args.output) if args.output else data_dir / "homeserver.yaml"
    if out.exists() and not args.force:
        print(f"config exists, kept: {out}")
    else:
        rel = Path(".") if out.parent.resolve() == data_dir.resolve() else data_dir.resolve()
        token = secrets.token_urlsafe(24) if args.registration == "token" else None
        _write_private(
            out,
            render(
                args.server_name, str(rel), args.client_port, args.federation_port, args.metrics_port,
                registration=args.registration, registration_token=token,
            ),
        )
        print(f"wrote config: {out}")
        if token is not None:
            print(f"registration is on with the registration token: {token}")
        elif args.registration == "open":
            print("registration is open: anyone who reaches the client port can create an account")
        else:
            print("registration is off (client.enable_registration in the config)")
    key_path = data_dir / "signing.key"
    if not key_path.exists():
        write_new_key_file(key_path)
        print(f"wrote signing key: {key_path}")
    cert, key = data_dir / "tls.crt", data_dir / "tls.key"
    if not cert.exists() or not key.exists():
        host, _ = split_server_name(args.server_name)
        hosts = [host.strip("[]")] + [h for h in ("localhost", "127.0.0.1") if h != host]
        issue_certificate(cert, key, hosts)
        print(f"wrote self-signed TLS certificate: {cert}")


def cmd_generate_key(args: argparse.Namespace) -> None:
    if args.output:
        try:
            write_new_key_file(args.output)
        except FileExistsError:
            raise CliError(f"key file exists, not overwritten: {args.output}") from None
        print(f"wrote signing key: {args.output}")
    else:
        sys.stdout.write(generate_key_line())


async def _migrate(config: Config) -> list[int]:
    db = await open_database(
        config.database.engine,
        path=config.database.path,
        dsn=config.database.dsn,
        sqlite_sync=config.database.sqlite_sync,
        min_size=1,
        max_size=2,
        timeout=config.database.connect_timeout,
    )
    try:
        return await migrate(db)
    finally:
        await db.close()


def cmd_migrate(args: argparse.Namespace) -> None:
    config = _load(args.config)
    try:
        applied = asyncio.run(_migrate(config))
    except DatabaseError as e:
        raise CliError(str(e)) from None
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")


def cmd_run(args: argparse.Namespace) -> None:
    from homeserver.server import run_forever

    config = _load(args.config)
    _check_files(config)
    setup_logging(args.log_level or config.logging.level, config.logging.format)
    try:
        asyncio.run(run_forever(config))
    except DatabaseError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"cannot start listeners: {e.strerror or e}") from None
    except KeyboardInterrupt:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeserver", description="A small Matrix homeserver")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the homeserver")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="overrides logging.level of the config")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("migrate", help="apply database migrations and exit")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("generate-config", help="write a config, signing key and TLS certificate")
    p.add_argument("--server-name", required=True)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--output", help="config file path (default DATA_DIR/homeserver.yaml)")
    p.add_argument("--client-port", type=int, default=8008)
    p.add_argument("--federation-port", type=int, default=8448)
    p.add_argument("--metrics-port", type=int, default=9009)
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.add_argument("--registration", choices=REGISTRATION_MODES, default="off",
                   help="off (default); token: registration needs a random token, written to the config "
                        "and printed; open: anyone may register, without verification")
    p.set_defaults(func=cmd_generate_config)

    p = sub.add_parser("generate-key", help="print (or write) a new ed25519 signing key")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_generate_key)

    add_testbed_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (CliError, TestbedError) as e:
        print(f"homeserver: {e}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0
