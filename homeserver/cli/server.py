"""Setting up and running one server: ``run``, ``migrate``, ``generate-config``,
``generate-key``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import secrets
import sys
from pathlib import Path

from homeserver.cli.common import CliError, config_database, load, private_dir, write_private
from homeserver.config import Config
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
from homeserver.storage.database import DatabaseError
from homeserver.storage.migrations import migrate


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


def cmd_generate_config(args: argparse.Namespace) -> None:
    if not is_valid_server_name(args.server_name):
        raise CliError(f"{args.server_name!r} is not a valid server name")
    data_dir = Path(args.data_dir)
    private_dir(data_dir)
    out = Path(args.output) if args.output else data_dir / "homeserver.yaml"
    if out.exists() and not args.force:
        print(f"config exists, kept: {out}")
    else:
        rel = Path(".") if out.parent.resolve() == data_dir.resolve() else data_dir.resolve()
        token = secrets.token_urlsafe(24) if args.registration == "token" else None
        write_private(
            out,
            render(
                args.server_name, str(rel), args.client_port, args.federation_port, args.metrics_port,
                bind=args.bind, registration=args.registration, registration_token=token,
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


def _bind_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address") from None


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
    async with config_database(config) as db:
        return await migrate(db)


def cmd_migrate(args: argparse.Namespace) -> None:
    config = load(args.config)
    try:
        applied = asyncio.run(_migrate(config))
    except DatabaseError as e:
        raise CliError(str(e)) from None
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")


def cmd_run(args: argparse.Namespace) -> None:
    from homeserver.server import run_forever

    config = load(args.config)
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


def add_server_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:

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
    p.add_argument("--bind", default="127.0.0.1", type=_bind_address,
                   help="address of the client and federation listeners (default 127.0.0.1; 0.0.0.0 in a "
                        "container, whose ports are published); metrics stay on 127.0.0.1")
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.add_argument("--registration", choices=REGISTRATION_MODES, default="off",
                   help="off (default); token: registration needs a random token, written to the config "
                        "and printed; open: anyone may register, without verification")
    p.set_defaults(func=cmd_generate_config)

    p = sub.add_parser("generate-key", help="print (or write) a new ed25519 signing key")
    p.add_argument("--output", "-o", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_generate_key)

