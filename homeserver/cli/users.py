"""Operators' user commands: ``user add|list|deactivate|reset-password`` and
``registration-token create|list|revoke``.

They work on the config's database directly, with or without the server running (the
schema is migrated first, as ``run`` would). The running server reads accounts, access
tokens and registration tokens from the database on every request (no cache of them), so
a deactivation or password reset made here takes effect there at once. Accounts are made
through the same store method as client registration (profile with displayname =
localpart, scrypt hash at the config's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from homeserver.cli.common import CliError, config_database, load
from homeserver.client_api.auth import MAX_PASSWORD_LENGTH
from homeserver.config import Config
from homeserver.events.identifiers import is_valid_user_id, server_name_of
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.migrations import migrate
from homeserver.storage.registration_tokens import (
    RegistrationToken,
    RegistrationTokenStore,
    TokenExistsError,
    is_valid_token_text,
)
from homeserver.storage.users import UserExistsError, UserStore
from homeserver.util.clock import now_ms

T = TypeVar("T")
_DURATION = re.compile(r"^(\d{1,9})([smhdw])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


# ---------------------------------------------------------------------- shared pieces


def _run(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        async with config_database(config) as db:
            await migrate(db)
            return await work(db)

    return asyncio.run(go())


def user_id_for(name: str, server_name: str) -> str:
    """The full user ID of ``name`` (a localpart or ``@local:server``) on this server."""
    if name.startswith("@"):
        if ":" not in name:
            raise CliError(f"{name!r} is not a user ID (expected @localpart:{server_name})")
        if server_name_of(name) != server_name:
            raise CliError(f"{name} is not a user of this server ({server_name})")
        user_id = name
    else:
        user_id = f"@{name}:{server_name}"
    if not is_valid_user_id(user_id, strict=True):
        raise CliError(
            f"invalid user name {name!r}: a localpart is lower-case a-z, 0-9 and . _ = - / +, "
            "and the user ID at most 255 bytes"
        )
    return user_id


def parse_duration_ms(text: str) -> int:
    """``30m``, ``12h``, ``7d``, ``2w`` (also ``s``) in milliseconds."""
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise CliError(f"invalid duration {text!r}: a positive number followed by s, m, h, d or w (e.g. 7d)")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def read_password(path: str | None, config: Config) -> str:
    """The new password: the first line of ``path`` (``-``: standard input), else asked
    twice on the terminal. Refused when empty, shorter than ``client.password_min_length``
    or longer than login accepts."""
    if path is not None:
        try:
            if path == "-":
                line = sys.stdin.readline()
            else:
                with open(path, encoding="utf-8") as f:
                    line = f.readline()
        except OSError as e:
            raise CliError(f"cannot read password file {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise CliError(f"password file {path} is not UTF-8 text") from None
        password = line.rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if password and getpass.getpass("Repeat the password: ") != password:
            raise CliError("the passwords do not match")
    else:
        raise CliError("no password: give --password-file FILE (- for standard input), or run on a terminal")
    if not password:
        raise CliError("the password is empty")
    minimum = config.client.password_min_length
    if len(password) < minimum:
        raise CliError(f"the password is shorter than {minimum} characters (client.password_min_length)")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise CliError(f"the password is longer than {MAX_PASSWORD_LENGTH} characters")
    return password


def _time(ms: int | None, never: str = "never") -> str:
    if ms is None:
        return never
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _users(config: Config, db: Database) -> UserStore:
    return UserStore(db, password_log_n=config.client.password_scrypt_log_n)


# ---------------------------------------------------------------------- user commands


def cmd_user_add(args: argparse.Namespace) -> None:
    config = load(args.config)
    user_id = user_id_for(args.name, config.server_name)
    password = read_password(args.password_file, config)
    localpart = user_id[1:].split(":", 1)[0]

    async def work(db: Database) -> None:
        try:
            await _users(config, db).create_user(user_id, password, localpart, admin=args.admin)
        except UserExistsError:
            raise CliError(f"{user_id} exists already") from None

    _run(config, work)
    print(user_id)


def cmd_user_list(args: argparse.Namespace) -> None:
    config = load(args.config)
    accounts = _run(config, lambda db: _users(config, db).list_accounts())
    if args.json:
        print(json.dumps([{"user_id": a.user_id, "admin": a.admin, "deactivated": a.deactivated,
                           "created_ts": a.created_ts} for a in accounts], indent=2))
        return
    if not accounts:
        print("no users")
        return
    print(_table(["USER ID", "ADMIN", "DEACTIVATED", "CREATED"],
                 [[a.user_id, _yes(a.admin), _yes(a.deactivated), _time(a.created_ts)] for a in accounts]))


async def _existing(users: UserStore, user_id: str) -> bool:
    """Whether the user is deactivated; CliError when there is no such user."""
    account = await users.get_account(user_id)
    if account is None:
        raise CliError(f"no such user: {user_id}")
    return account.deactivated


def cmd_user_deactivate(args: argparse.Namespace) -> None:
    config = load(args.config)
    user_id = user_id_for(args.name, config.server_name)

    async def work(db: Database) -> tuple[bool, int]:
        users = _users(config, db)
        already = await _existing(users, user_id)
        await users.deactivate(user_id)
        memberships = await EventStore(db).memberships_of_user(user_id)
        return already, sum(1 for m in memberships.values() if m in ("join", "invite", "knock"))

    already, rooms = _run(config, work)
    print(f"{user_id} was deactivated already" if already else f"deactivated {user_id}")
    if rooms:
        # Leaving a room means signing and sending a leave event: the running server's work.
        print(f"note: {user_id} is still a member of (or invited to) {rooms} room(s); this command "
              "does not send leave events (deactivation through the client API does)", file=sys.stderr)


def cmd_user_reset_password(args: argparse.Namespace) -> None:
    config = load(args.config)
    user_id = user_id_for(args.name, config.server_name)

    async def check(db: Database) -> None:
        if await _existing(_users(config, db), user_id):
            raise CliError(f"{user_id} is deactivated")

    _run(config, check)  # before asking for a password
    password = read_password(args.password_file, config)

    async def work(db: Database) -> None:
        users = _users(config, db)
        if await _existing(users, user_id):
            raise CliError(f"{user_id} is deactivated")
        await users.set_password(user_id, password, logout_others=not args.keep_devices)

    _run(config, work)
    print(f"password of {user_id} changed" + ("" if args.keep_devices else "; every device logged out"))


# ---------------------------------------------------------------------- registration tokens


def _token_json(t: RegistrationToken, now: int) -> dict[str, Any]:
    return {"token": t.token, "uses_allowed": t.uses_allowed, "pending": t.pending, "completed": t.completed,
            "expiry_time": t.expiry_time, "created_ts": t.created_ts, "valid": t.valid_at(now)}


def cmd_token_create(args: argparse.Namespace) -> None:
    config = load(args.config)
    if args.token is not None and not is_valid_token_text(args.token):
        raise CliError("invalid token: 1 to 64 characters of A-Z, a-z, 0-9 and . _ ~ -")
    if args.uses is not None and args.uses < 1:
        raise CliError("--uses must be at least 1")
    expiry = now_ms() + parse_duration_ms(args.expires_in) if args.expires_in is not None else None

    async def work(db: Database) -> RegistrationToken:
        try:
            return await RegistrationTokenStore(db).create(args.token, uses_allowed=args.uses, expiry_time=expiry)
        except TokenExistsError:
            raise CliError(f"the registration token {args.token} exists already") from None

    token = _run(config, work)
    print(token.token)
    if not config.client.enable_registration or not (
        config.client.registration_requires_token or config.client.registration_token
    ):
        print("note: registration with tokens needs client.enable_registration: true and "
              "client.registration_requires_token: true in the config", file=sys.stderr)


def cmd_token_list(args: argparse.Namespace) -> None:
    config = load(args.config)
    tokens = _run(config, lambda db: RegistrationTokenStore(db).list())
    now = now_ms()
    if args.json:
        print(json.dumps([_token_json(t, now) for t in tokens], indent=2))
        return
    if not tokens:
        print("no registration tokens")
        return
    print(_table(
        ["TOKEN", "USES ALLOWED", "PENDING", "COMPLETED", "EXPIRES", "VALID"],
        [[t.token, "unlimited" if t.uses_allowed is None else str(t.uses_allowed), str(t.pending),
          str(t.completed), _time(t.expiry_time), _yes(t.valid_at(now))] for t in tokens],
    ))


def cmd_token_revoke(args: argparse.Namespace) -> None:
    config = load(args.config)
    if not _run(config, lambda db: RegistrationTokenStore(db).revoke(args.token)):
        raise CliError(f"no such registration token: {args.token}")
    print(f"revoked {args.token}")


# ---------------------------------------------------------------------- parsers


def add_user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = sub.add_parser("user", help="manage local accounts (works with or without the server running)")
    users = user.add_subparsers(dest="user_command", required=True)

    p = users.add_parser("add", help="create an account and print its user ID")
    p.add_argument("name", help="localpart or @localpart:server of this server")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--admin", action="store_true", help="mark the account as a server admin")
    p.add_argument("--password-file", help="read the password from the first line of this file (- for stdin); "
                                           "default: ask on the terminal")
    p.set_defaults(func=cmd_user_add)

    p = users.add_parser("list", help="list the accounts")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_user_list)

    p = users.add_parser("deactivate", help="close an account: no login, every session ended")
    p.add_argument("name", help="localpart or @localpart:server of this server")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.set_defaults(func=cmd_user_deactivate)

    p = users.add_parser("reset-password", help="set a new password and log out every device")
    p.add_argument("name", help="localpart or @localpart:server of this server")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--password-file", help="read the password from the first line of this file (- for stdin); "
                                           "default: ask on the terminal")
    p.add_argument("--keep-devices", action="store_true", help="do not log out the user's devices")
    p.set_defaults(func=cmd_user_reset_password)

    tok = sub.add_parser("registration-token", help="manage registration tokens (m.login.registration_token)")
    toks = tok.add_subparsers(dest="token_command", required=True)

    p = toks.add_parser("create", help="create a registration token and print it")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--token", help="the token text (default: random)")
    p.add_argument("--uses", type=int, help="registrations allowed with it (default: unlimited)")
    p.add_argument("--expires-in", help="lifetime such as 30m, 12h, 7d, 2w (default: never expires)")
    p.set_defaults(func=cmd_token_create)

    p = toks.add_parser("list", help="list registration tokens")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_token_list)

    p = toks.add_parser("revoke", help="delete a registration token")
    p.add_argument("token")
    p.add_argument("-c", "--config", required=True, help="config file")
    p.set_defaults(func=cmd_token_revoke)
