"""Operators' report commands: ``reports list`` (the reports users sent about events and
rooms, newest first), with or without the server running."""

from __future__ import annotations

import argparse
import asyncio
import json
import unicodedata
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
                 [[str(r.id), _time(r.received_ts), printable(r.user_id), printable(r.room_id),
                   printable(r.event_id or "-"), "-" if r.score is None else str(r.score),
                   printable(r.reason or "")[:80]]
                  for r in reports]))


def printable(text: str) -> str:
    """A reporter's text for a terminal: control and format characters (an escape sequence
    that would drive the operator's terminal, a carriage return that would overwrite the
    line, a right-to-left override that would disguise it) shown as ``\\x1b``-style escapes,
    line breaks as spaces."""
    out = []
    for c in text:
        if c in "\n\u2028\u2029":
            out.append(" ")
        elif unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out)


def _limit(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000000")
    return value


def add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reports = sub.add_parser("reports", help="reports users sent about events and rooms")
    cmds = reports.add_subparsers(dest="reports_command", required=True)
    p = cmds.add_parser("list", help="list the reports, newest first")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--limit", type=_limit, default=100, help="at most this many (default 100, 1 to 1000000)")
    p.set_defaults(func=cmd_reports_list)
