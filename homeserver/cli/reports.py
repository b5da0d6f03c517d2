"""Operators' report commands: ``reports list`` (the reports users sent about events and
rooms, newest first), with or without the server running."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from homeserver.cli.common import config_database, load
from homeserver.cli.users import _table, _time
from homeserver.storage.migrations import migrate
from homeserver.storage.reports import Report, ReportStore


def cmd_reports_list(args: argparse.Namespace) -> None:
    config = load(args.config)

    async def go() -> list[Report]:
        async with config_database(config) as db:
            await migrate(db)
            return await ReportStore(db).list(limit=args.limit)

    reports = asyncio.run(go())
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
        return
    if not reports:
        print("no reports")
        return
    print(_table(["ID", "RECEIVED", "REPORTER", "ROOM", "EVENT", "SCORE", "REASON"],
                 [[str(r.id), _time(r.received_ts), r.user_id, r.room_id, r.event_id or "-",
                   "-" if r.score is None else str(r.score), (r.reason or "").replace("\n", " ")[:80]]
                  for r in reports]))


def add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reports = sub.add_parser("reports", help="reports users sent about events and rooms")
    cmds = reports.add_subparsers(dest="reports_command", required=True)
    p = cmds.add_parser("list", help="list the reports, newest first")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.set_defaults(func=cmd_reports_list)
