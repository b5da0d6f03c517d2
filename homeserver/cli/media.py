"""Operators' media commands: ``media purge-remote``.

``purge-remote`` deletes the cached copies of other servers' media not accessed since a
time (``--before 30d``: thirty days ago; default ``media.remote_retention``): their rows,
their thumbnails' rows, and the files no row refers to any more. It works with or without
the server running (a purged copy is fetched again when next asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from homeserver.cli.common import CliError, config_database, load
from homeserver.media.repository import MediaRepository, PurgeResult
from homeserver.storage.migrations import migrate
from homeserver.util.clock import now_ms
from homeserver.util.durations import parse_duration


def cmd_purge_remote(args: argparse.Namespace) -> int:
    config = load(args.config)
    text = args.before or config.media.remote_retention
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise CliError(f"--before: {e}") from None
    before = now_ms() - int(seconds * 1000)

    async def go() -> PurgeResult:
        async with config_database(config) as db:
            await migrate(db)
            repo = MediaRepository.open(config, db)
            return await repo.purge_remote(before)

    result = asyncio.run(go())
    summary: dict[str, Any] = {"media": result.media, "files": result.files, "bytes": result.bytes}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"purged {result.media} remote media not accessed for {text}: "
              f"{result.files} files, {result.bytes} bytes freed")
    return 0


def add_media_commands(sub: Any) -> None:
    media = sub.add_parser("media", help="manage the media repository")
    commands = media.add_subparsers(dest="media_command", required=True)
    p = commands.add_parser(
        "purge-remote", help="delete cached remote media not accessed since a time (rows and unreferenced files)"
    )
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--before", help="not accessed for this long: <n>w, <n>d, <n>h, <n>m or <n>s "
                                    "(default: media.remote_retention)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_purge_remote)
