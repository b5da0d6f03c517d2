"""Operators' user commands (``homeserver user ...``, ``homeserver registration-token ...``)
on both engines: against the database of a running server (their effect seen over HTTP at
once), and on a fresh database with no server at all; registration with database tokens
(uses, expiry, revocation, concurrent registrations) and the validity endpoint."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.cli import main
from homeserver.config import ConfigError, parse_config
from homeserver.config_template import SAMPLE_VALUES, TEMPLATE
from homeserver.server import RunningServer
from homeserver.storage.migrations import migrate
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.users import UserExistsError, UserStore
from homeserver.util.clock import now_ms
from tests.clients import raw
from tests.conftest import DatabaseFactory
from tests.procs import write_config
from tests.servers import TEST_SCRYPT_LOG_N, make_config, running_server

V3 = "/_matrix/client/v3"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
PW = "long-enough-pw"
PW2 = "another-long-pw"
# Roomy per-IP limits: these tests make many requests from one address.
_LIMITS = {"login_rate_limit": {"per_second": 100.0, "burst_count": 100},
           "register_rate_limit": {"per_second": 100.0, "burst_count": 100}}
CLOSED = {"client": {"enable_registration": False, "enable_registration_without_verification": False, **_LIMITS}}
BY_TOKEN = {"client": {"enable_registration": True, "enable_registration_without_verification": False,
                       "registration_requires_token": True, "registration_token": "config-token-1", **_LIMITS}}


class Cli:
    """``main([...])`` of the command line, run on a thread (it has its own event loop), so
    that an in-process server keeps serving meanwhile; its output is read back with capsys."""

    def __init__(self, config_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path) -> None:
        self.config = str(config_path)
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.tmp = tmp_path
        self._files = 0

    def password_file(self, text: str) -> str:
        self._files += 1
        path = self.tmp / f"password{self._files}"
        path.write_text(text)
        return str(path)

    async def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self.capsys.readouterr()
        status = await asyncio.to_thread(main, [*args, "-c", self.config])
        out, err = self.capsys.readouterr()
        return status, out, err

    async def ok(self, *args: str, stdin: str = "") -> str:
        status, out, err = await self(*args, stdin=stdin)
        assert status == 0, err
        return out

    async def fails(self, needle: str, *args: str, stdin: str = "") -> None:
        status, _, err = await self(*args, stdin=stdin)
        assert status == 1
        lines = [line for line in err.splitlines() if line.startswith("homeserver: ")]
        assert len(lines) == 1 and needle in lines[0], err
        assert "Traceback" not in err


async def login(server: RunningServer, user: str, password: str) -> tuple[int, Any]:
    return await raw(server, "POST", f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password})


async def whoami(server: RunningServer, token: str) -> int:
    return (await raw(server, "GET", f"{V3}/account/whoami", token=token))[0]


async def test_user_add_and_list_then_login_over_http(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca, extra=CLOSED)
    cli = Cli(write_config(config, tmp_path / "hs.yaml"), capsys, monkeypatch, tmp_path)
    name = config.server_name
    async with running_server(config) as server:
        # 1. A localpart, and a full user ID read from standard input, marked admin.
        assert await cli.ok("user", "add", "alice", "--password-file", cli.password_file(PW + "\n")) \
            == f"@alice:{name}\n"
        assert await cli.ok("user", "add", f"@bob:{name}", "--admin", "--password-file", "-",
                            stdin=PW2 + "\nignored second line\n") == f"@bob:{name}\n"
        # 2. Normal accounts: they log in with m.login.password and have the profile
        # registration gives them.
        status, body = await login(server, "alice", PW)
        assert status == 200 and body["user_id"] == f"@alice:{name}"
        assert await whoami(server, body["access_token"]) == 200
        status, body = await login(server, f"@bob:{name}", PW2)
        assert status == 200
        status, profile = await raw(server, "GET", f"{V3}/profile/@alice:{name}")
        assert (status, profile.get("displayname")) == (200, "alice")
        # 3. The list, as JSON and as a table.
        listed = json.loads(await cli.ok("user", "list", "--json"))
        assert [(u["user_id"], u["admin"], u["deactivated"]) for u in listed] == [
            (f"@alice:{name}", False, False), (f"@bob:{name}", True, False)]
        assert all(isinstance(u["created_ts"], int) and u["created_ts"] > 0 for u in listed)
        table = (await cli.ok("user", "list")).splitlines()
        assert table[0].split() == ["USER", "ID", "ADMIN", "DEACTIVATED", "CREATED"]
        assert table[2].split()[:3] == [f"@bob:{name}", "yes", "no"]
        # 4. Errors: one line each, exit status 1, nothing created.
        good = cli.password_file(PW)
        await cli.fails("exists already", "user", "add", "alice", "--password-file", good)
        await cli.fails("invalid user name", "user", "add", "Bad Name", "--password-file", good)
        await cli.fails("invalid user name", "user", "add", "x" * 300, "--password-file", good)
        await cli.fails("not a user of this server", "user", "add", "@carol:other.example", "--password-file", good)
        await cli.fails("not a user ID", "user", "add", "@carol", "--password-file", good)
        await cli.fails("the password is empty", "user", "add", "carol", "--password-file", cli.password_file("\n"))
        await cli.fails("the password is empty", "user", "add", "carol", "--password-file", "-", stdin="")
        await cli.fails("shorter than 8", "user", "add", "carol", "--password-file", cli.password_file("short"))
        await cli.fails("cannot read password file", "user", "add", "carol",
                        "--password-file", str(tmp_path / "missing"))
        await cli.fails("no password", "user", "add", "carol")  # stdin is not a terminal
        await cli.fails("no such user", "user", "deactivate", "nobody")
        await cli.fails("no such user", "user", "reset-password", "nobody", "--password-file", good)
        assert len(json.loads(await cli.ok("user", "list", "--json"))) == 2
        # 5. Registration stays off: a database token does not open it.
        status, out, err = await cli("registration-token", "create")
        assert status == 0 and "registration_requires_token" in err
        token = out.strip()
        assert (await raw(server, "GET", f"{VALIDITY}?token={token}"))[0] == 403
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "dave", "password": PW, "auth": {"type": "m.login.registration_token", "token": token}})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


async def test_deactivate_and_reset_password_take_effect_on_the_running_server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca, extra=CLOSED)
    cli = Cli(write_config(config, tmp_path / "hs.yaml"), capsys, monkeypatch, tmp_path)
    async with running_server(config) as server:
        await cli.ok("user", "add", "alice", "--password-file", cli.password_file(PW))
        first = (await login(server, "alice", PW))[1]["access_token"]
        second = (await login(server, "alice", PW))[1]["access_token"]
        status, room = await raw(server, "POST", f"{V3}/createRoom", token=first, json={})
        assert status == 200
        # 1. reset-password --keep-devices: the sessions stay, only the new password logs in.
        out = await cli.ok("user", "reset-password", "alice", "--keep-devices", "--password-file",
                           cli.password_file(PW2))
        assert "changed" in out
        assert await whoami(server, first) == 200 and await whoami(server, second) == 200
        assert (await login(server, "alice", PW))[0] == 403
        third = (await login(server, "alice", PW2))[1]["access_token"]
        # 2. reset-password: every session ends at once.
        await cli.ok("user", "reset-password", "@alice:" + config.server_name, "--password-file", "-", stdin=PW)
        for token in (first, second, third):
            status, body = await raw(server, "GET", f"{V3}/account/whoami", token=token)
            assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        fourth = (await login(server, "alice", PW))[1]["access_token"]
        assert await whoami(server, fourth) == 200
        # 3. deactivate: the live token is refused, login too, the list says so; the CLI says
        # which rooms it did not leave.
        status, out, err = await cli("user", "deactivate", "alice")
        assert status == 0 and out.startswith("deactivated @alice:") and "1 room(s)" in err
        status, body = await raw(server, "GET", f"{V3}/account/whoami", token=fourth)
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        assert (await login(server, "alice", PW))[0] == 403
        assert (await raw(server, "GET", f"{V3}/rooms/{room['room_id']}/state", token=fourth))[0] == 401
        listed = json.loads(await cli.ok("user", "list", "--json"))
        assert [(u["user_id"], u["deactivated"]) for u in listed] == [(f"@alice:{config.server_name}", True)]
        assert "already" in await cli.ok("user", "deactivate", "alice")
        await cli.fails("is deactivated", "user", "reset-password", "alice", "--password-file", cli.password_file(PW))
        await cli.fails("exists already", "user", "add", "alice", "--password-file", cli.password_file(PW))
        assert (await login(server, "alice", PW))[0] == 403


async def _register(server: RunningServer, username: str, token: str) -> tuple[int, Any]:
    """The token flow to its end: the token stage, then the dummy stage."""
    status, body = await raw(server, "POST", f"{V3}/register", json={
        "username": username, "password": PW, "auth": {"type": "m.login.registration_token", "token": token}})
    if status != 401 or body.get("errcode"):
        return status, body
    return await raw(server, "POST", f"{V3}/register", json={
        "username": username, "password": PW, "auth": {"type": "m.login.dummy", "session": body["session"]}})


async def _valid(server: RunningServer, token: str) -> bool:
    status, body = await raw(server, "GET", f"{VALIDITY}?token={token}")
    assert status == 200, body
    return bool(body["valid"])


async def test_registration_with_database_tokens(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca, extra=BY_TOKEN)
    cli = Cli(write_config(config, tmp_path / "hs.yaml"), capsys, monkeypatch, tmp_path)
    async with running_server(config) as server:
        # 1. The flow asks for a token; a one-use token made by the CLI.
        status, body = await raw(server, "POST", f"{V3}/register", json={"username": "x", "password": PW})
        assert status == 401 and body["flows"] == [{"stages": ["m.login.registration_token", "m.login.dummy"]}]
        assert await cli.ok("registration-token", "create", "--token", "one-use", "--uses", "1") == "one-use\n"
        assert await _valid(server, "one-use") and not await _valid(server, "unknown")
        assert (await raw(server, "GET", "/_matrix/client/v3/register/m.login.registration_token/validity"
                                         "?token=one-use"))[1] == {"valid": True}
        status, body = await _register(server, "first", "one-use")
        assert status == 200 and body["user_id"] == f"@first:{config.server_name}"
        # 2. Used up: refused at the token stage, and invalid.
        status, body = await _register(server, "second", "one-use")
        assert (status, body["errcode"]) == (401, "M_FORBIDDEN")
        assert not await _valid(server, "one-use")
        # 3. Expired (made in the past through the store), and revoked by the CLI.
        await RegistrationTokenStore(server.services.db).create("expired", expiry_time=now_ms() - 1000)
        assert not await _valid(server, "expired")
        assert (await _register(server, "third", "expired"))[0] == 401
        await cli.ok("registration-token", "create", "--token", "to-revoke")
        assert await _valid(server, "to-revoke")
        assert await cli.ok("registration-token", "revoke", "to-revoke") == "revoked to-revoke\n"
        assert not await _valid(server, "to-revoke")
        assert (await _register(server, "third", "to-revoke"))[0] == 401
        await cli.fails("no such registration token", "registration-token", "revoke", "to-revoke")
        # 4. Revoked between the token stage and the end: no account, no use.
        await cli.ok("registration-token", "create", "--token", "late")
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "late", "password": PW, "auth": {"type": "m.login.registration_token", "token": "late"}})
        assert status == 401 and body["completed"] == ["m.login.registration_token"]
        await cli.ok("registration-token", "revoke", "late")
        status, body2 = await raw(server, "POST", f"{V3}/register", json={
            "username": "late", "password": PW, "auth": {"type": "m.login.dummy", "session": body["session"]}})
        assert (status, body2["errcode"]) == (401, "M_FORBIDDEN")
        assert not await UserStore(server.services.db).user_exists(f"@late:{config.server_name}")
        # 5. Two uses, five registrations past the token stage at once: exactly two accounts.
        await cli.ok("registration-token", "create", "--token", "two-uses", "--uses", "2")
        sessions = []
        for i in range(5):
            status, body = await raw(server, "POST", f"{V3}/register", json={
                "username": f"racer{i}", "password": PW,
                "auth": {"type": "m.login.registration_token", "token": "two-uses"}})
            assert status == 401 and body["completed"] == ["m.login.registration_token"]
            sessions.append(body["session"])
        results = await asyncio.gather(*(raw(server, "POST", f"{V3}/register", json={
            "username": f"racer{i}", "password": PW, "auth": {"type": "m.login.dummy", "session": sid}})
            for i, sid in enumerate(sessions)))
        assert sorted(status for status, _ in results) == [200, 200, 401, 401, 401]
        # 6. The config's token still works and uses nothing; a random, expiring token.
        assert (await _register(server, "configured", "config-token-1"))[0] == 200
        random_token = (await cli.ok("registration-token", "create", "--expires-in", "7d")).strip()
        assert len(random_token) >= 16 and await _valid(server, random_token)
        # 7. The list tells uses, expiry and validity.
        listed = {t["token"]: t for t in json.loads(await cli.ok("registration-token", "list", "--json"))}
        assert set(listed) == {"one-use", "expired", "two-uses", random_token}
        assert (listed["one-use"]["uses_allowed"], listed["one-use"]["completed"], listed["one-use"]["valid"]) \
            == (1, 1, False)
        assert (listed["two-uses"]["completed"], listed["two-uses"]["valid"]) == (2, False)
        assert listed["expired"]["valid"] is False
        fresh = listed[random_token]
        assert fresh["uses_allowed"] is None and fresh["pending"] == 0 and fresh["valid"] is True
        assert 6 * 86_400_000 < fresh["expiry_time"] - now_ms() <= 7 * 86_400_000
        table = (await cli.ok("registration-token", "list")).splitlines()
        assert table[0].split() == ["TOKEN", "USES", "ALLOWED", "PENDING", "COMPLETED", "EXPIRES", "VALID"]
        row = next(line.split() for line in table if line.startswith("one-use"))
        assert row[:4] == ["one-use", "1", "0", "1"] and row[-1] == "no"
        # 8. Bad input to create.
        await cli.fails("exists already", "registration-token", "create", "--token", "one-use")
        await cli.fails("invalid token", "registration-token", "create", "--token", "has space")
        await cli.fails("invalid token", "registration-token", "create", "--token", "x" * 65)
        await cli.fails("--uses must be at least 1", "registration-token", "create", "--uses", "0")
        await cli.fails("invalid duration", "registration-token", "create", "--expires-in", "soon")
        await cli.fails("invalid duration", "registration-token", "create", "--expires-in", "0d")


async def test_token_uses_are_counted_once_under_concurrent_registrations(db_factory: DatabaseFactory) -> None:
    db = await db_factory.open()
    try:
        await migrate(db)
        tokens = RegistrationTokenStore(db)
        users = UserStore(db, password_log_n=TEST_SCRYPT_LOG_N)
        await tokens.create("three", uses_allowed=3)
        results = await asyncio.gather(
            *(users.create_user(f"@u{i}:example.org", PW, f"u{i}", registration_token="three") for i in range(10)),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 3
        token = await tokens.get("three")
        assert token is not None and token.completed == 3 and not token.valid_at(now_ms())
        assert len(await users.list_accounts()) == 3
        # A taken user ID uses nothing.
        await tokens.create("spare", uses_allowed=1)
        taken = next(f"@u{i}:example.org" for i, r in enumerate(results) if r is None)
        with pytest.raises(UserExistsError):
            await users.create_user(taken, PW, "x", registration_token="spare")
        assert (await tokens.get("spare")) is not None and await tokens.is_valid("spare")
        # The admin flag.
        assert await users.set_admin(taken, True) and not await users.set_admin("@nobody:example.org", True)
        account = await users.get_account(taken)
        assert account is not None and account.admin
    finally:
        await db.close()


def _hs(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m homeserver ...`` in its own process; its standard input is ``stdin``."""
    return subprocess.run([sys.executable, "-m", "homeserver", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


async def test_commands_on_a_fresh_database_without_a_server(tmp_path: Path, db_factory: DatabaseFactory) -> None:
    """The console as an operator meets it: right after generate-config, before any run."""
    data = tmp_path / "data"
    assert _hs("generate-config", "--server-name", "example.org", "--data-dir", str(data)).returncode == 0
    config = data / "homeserver.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["database"].update(await db_factory.new_settings())
    settings["client"]["password_scrypt_log_n"] = TEST_SCRYPT_LOG_N
    config.write_text(yaml.safe_dump(settings))

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return _hs(*args, "-c", str(config), stdin=stdin)

    added = run("user", "add", "admin", "--admin", "--password-file", "-", stdin=PW + "\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout == "@admin:example.org\n"
    missing = run("user", "add", "other")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no password" in missing.stderr
    bad = run("user", "add", "@x:elsewhere.org", "--password-file", "-", stdin=PW)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "not a user of this server" in bad.stderr
    listed = json.loads(run("user", "list", "--json").stdout)
    assert [(u["user_id"], u["admin"]) for u in listed] == [("@admin:example.org", True)]


def _on_terminal(args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run ``python -m homeserver ARGS`` with a new pseudo-terminal as its standard streams
    (in a session of its own, so getpass uses that terminal), typing ``answers`` one per
    prompt; (exit status, what it printed)."""
    fd, child_end = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "homeserver", *args], stdin=child_end, stdout=child_end,
                            stderr=child_end, start_new_session=True)
    os.close(child_end)
    seen, pending = b"", list(answers)
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 60)
            assert ready, f"no output from the command: {seen!r}"
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            # A prompt comes in one write, after getpass has flushed the terminal's input
            # (an answer typed earlier would be lost).
            if pending and chunk.rstrip().endswith(b":"):
                os.write(fd, pending.pop(0).encode() + b"\n")
    finally:
        os.close(fd)
        status = proc.wait(timeout=60)
    return status, seen.decode(errors="replace")


async def test_password_prompt_on_a_terminal(tmp_path: Path, db_factory: DatabaseFactory) -> None:
    data = tmp_path / "data"
    assert _hs("generate-config", "--server-name", "example.org", "--data-dir", str(data)).returncode == 0
    config = data / "homeserver.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["database"].update(await db_factory.new_settings())
    settings["client"]["password_scrypt_log_n"] = TEST_SCRYPT_LOG_N
    config.write_text(yaml.safe_dump(settings))
    status, shown = _on_terminal(["user", "add", "alice", "-c", str(config)], [PW, PW + "x"])
    assert status == 1 and "do not match" in shown
    status, shown = _on_terminal(["user", "add", "alice", "-c", str(config)], [PW, PW])
    assert status == 0 and "@alice:example.org" in shown and PW not in shown  # no echo
    status, shown = _on_terminal(["user", "reset-password", "alice", "-c", str(config)], [PW2, PW2])
    assert status == 0 and "changed" in shown


def test_database_tokens_need_registration_turned_on() -> None:
    """``registration_requires_token`` is a way to turn registration on; database tokens
    alone never are: registration stays off unless ``enable_registration`` says so."""
    data: dict[str, Any] = yaml.safe_load(TEMPLATE.substitute(SAMPLE_VALUES))
    assert data["client"]["registration_requires_token"] is False
    data["client"]["enable_registration"] = True
    with pytest.raises(ConfigError, match="registration_requires_token"):
        parse_config(data, Path("."))
    data["client"]["registration_requires_token"] = True
    assert parse_config(data, Path(".")).client.registration_requires_token
    data["client"]["enable_registration"] = False
    assert not parse_config(data, Path(".")).client.enable_registration
