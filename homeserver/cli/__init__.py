"""Command line: ``homeserver run | migrate | generate-config | generate-key | user |
registration-token | reports | port-db | backup | testbed | media``.

Every expected failure (bad config, bad key file, unreachable database) prints one line
to stderr and exits with status 1; no traceback. Each group of commands lives in its own
module and adds its subcommands here.
"""

from __future__ import annotations

import argparse
import sys

from homeserver import __version__
from homeserver.cli.common import CliError
from homeserver.cli.dbtools import add_db_commands
from homeserver.cli.media import add_media_commands
from homeserver.cli.reports import add_report_commands
from homeserver.cli.server import add_server_commands
from homeserver.cli.users import add_user_commands
from homeserver.storage.database import DatabaseError
from homeserver.testbed.commands import add_testbed_commands
from homeserver.testbed.state import TestbedError

__all__ = ["CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeserver", description="A small Matrix homeserver")
    parser.add_argument("--version", action="version", version=f"homeserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_server_commands(sub)
    add_user_commands(sub)
    add_db_commands(sub)
    add_media_commands(sub)
    add_report_commands(sub)
    add_testbed_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (CliError, TestbedError) as e:
        print(f"homeserver: {e}", file=sys.stderr)
        return 1
    except DatabaseError as e:
        print(f"homeserver: database: {e}", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0
