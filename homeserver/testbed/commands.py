"""``homeserver testbed ...``: the command-line face of the local and compose testbeds.

``up``, ``down``, ``stop``, ``kill``, ``start``, ``status`` manage local server processes;
``scenario`` runs a scenario and exits 2 when its expectation fails (1 for errors), with
its figures as the last line of output; ``gen-configs --compose`` is the compose init step.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from homeserver.testbed import compose, manager
from homeserver.testbed.scenarios import SCENARIOS, run_scenario
from homeserver.testbed.state import TestbedError, TestbedState

DEFAULT_DIR = "./testbed"
SCENARIO_FAILED = 2


def _say(text: str) -> None:
    print(text, flush=True)


def _print_table(state: TestbedState) -> None:
    print(manager.format_table(manager.status_rows(state)))


def cmd_up(args: argparse.Namespace) -> None:
    if args.servers < 1:
        raise TestbedError("--servers must be at least 1")
    state = manager.up(Path(args.dir), args.servers, postgres=args.postgres, log_level=args.log_level, say=_say)
    _print_table(state)


def cmd_down(args: argparse.Namespace) -> None:
    manager.down(Path(args.dir), purge=args.purge, say=_say)


def cmd_stop(args: argparse.Namespace) -> None:
    state = TestbedState.load(Path(args.dir))
    entry = state.server(args.name)
    stopped = manager.stop_server(state, entry, kill=args.kill)
    print(f"{'killed' if args.kill else 'stopped'} {entry.name}" if stopped else f"{entry.name} was not running")


def cmd_start(args: argparse.Namespace) -> None:
    state = TestbedState.load(Path(args.dir))
    entry = state.server(args.name)
    manager.start_server(state, entry, args.log_level)
    print(f"started {entry.name} ({entry.client_url})")


def cmd_status(args: argparse.Namespace) -> None:
    _print_table(TestbedState.load(Path(args.dir)))


def cmd_scenario(args: argparse.Namespace) -> int:
    if args.messages < 1:
        raise TestbedError("--messages must be at least 1")
    state = TestbedState.load(Path(args.dir))
    result = asyncio.run(run_scenario(
        state, args.name, messages=args.messages, victim=args.server, progress=not args.quiet
    ))
    print(manager.format_table(result.table))
    print(result.figures_line(), flush=True)
    return 0 if result.ok else SCENARIO_FAILED


def cmd_gen_configs(args: argparse.Namespace) -> None:
    if not args.compose:
        raise TestbedError("only --compose is supported (`testbed up` writes the local testbed's configs)")
    configs = compose.generate(
        Path(args.dir), args.servers, admin_dsn=args.postgres or compose.POSTGRES_ADMIN_DSN,
        create_databases=args.create_databases,
    )
    for config in configs:
        print(f"wrote config for {config.server_name} ({config.database.dsn})")


def add_testbed_commands(sub: Any) -> None:
    """Register ``testbed`` and its subcommands on the CLI's subparsers."""
    tb = sub.add_parser("testbed", help="a local multi-server testbed and federation scenarios")
    tsub = tb.add_subparsers(dest="testbed_command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = tsub.add_parser(name, help=help)
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"testbed directory (default {DEFAULT_DIR})")
        return p

    p = add("up", "create and start N servers (starts stopped ones, keeps data)")
    p.add_argument("--servers", type=int, default=3)
    p.add_argument("--postgres", metavar="DSN", help="admin DSN: each server gets its own database there")
    p.add_argument("--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_up)

    p = add("down", "stop every server (SIGTERM)")
    p.add_argument("--purge", action="store_true", help="also drop the servers' PostgreSQL databases")
    p.set_defaults(func=cmd_down)

    p = add("stop", "stop one server (SIGTERM, graceful)")
    p.add_argument("name")
    p.set_defaults(func=cmd_stop, kill=False)

    p = add("kill", "kill one server (SIGKILL, for crash tests)")
    p.add_argument("name")
    p.set_defaults(func=cmd_stop, kill=True)

    p = add("start", "start one server")
    p.add_argument("name")
    p.add_argument("--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_start)

    p = add("status", "print the servers, their state and URLs")
    p.set_defaults(func=cmd_status)

    p = add("scenario", "run a federation scenario; exit 2 if its expectation fails")
    p.add_argument("name", choices=SCENARIOS)
    p.add_argument("--messages", type=int, default=10, help="messages per server (amplification, outage)")
    p.add_argument("--server", help="outage: the server to stop (default: the last)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_scenario)

    p = add("gen-configs", "write the compose testbed's CA, keys and configs (the compose init step)")
    p.add_argument("--compose", action="store_true", help="compose layout: hs1:8448 ... on the compose network")
    p.add_argument("--servers", type=int, default=3)
    p.add_argument("--postgres", metavar="DSN", help=f"admin DSN (default {compose.POSTGRES_ADMIN_DSN})")
    p.add_argument("--create-databases", action="store_true", help="create each server's database")
    p.set_defaults(func=cmd_gen_configs)
