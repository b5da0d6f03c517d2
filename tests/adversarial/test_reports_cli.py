"""``homeserver reports list`` shows what reporters wrote to an operator's terminal: a
reason holding an escape sequence (``ESC[2J`` clears the screen, ``ESC]0;...`` retitles
it), a carriage return or a right-to-left override was printed raw (only line feeds were
replaced). ``--limit -1`` reached PostgreSQL's LIMIT (a traceback). Both engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homeserver.cli.reports import printable
from tests.clients import nio_user, raw
from tests.conftest import DatabaseFactory
from tests.integration.test_cli_users import Cli
from tests.procs import write_config
from tests.servers import make_config, running_server

V3 = "/_matrix/client/v3"
HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07\rfake line\u202egnp.exe\nnext\x00"


def test_printable() -> None:
    assert printable("plain é 日本") == "plain é 日本"
    shown = printable(HOSTILE)
    assert all(c.isprintable() for c in shown), shown
    assert shown == "ok\\x1b[2J\\x1b]0;pwned\\x07\\rfake line\\u202egnp.exe next\\x00"


async def test_reports_list_is_safe_for_a_terminal(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    cli = Cli(write_config(config, tmp_path / "hs.yaml"), capsys, monkeypatch, tmp_path)
    async with running_server(config) as s, nio_user(s, "alice") as alice:
        token = alice.access_token
        room = (await raw(s, "POST", f"{V3}/createRoom", token=token, json={}))[1]["room_id"]
        # The client API refuses NUL; everything else in the reason is stored as sent.
        reason = HOSTILE.replace("\x00", "")
        assert await raw(s, "POST", f"{V3}/rooms/{room}/report", token=token, json={"reason": reason}) == (200, {})
        table = await cli.ok("reports", "list")
        assert "\x1b" not in table and "\r" not in table and "\u202e" not in table and "\x07" not in table
        assert "\\x1b[2J" in table
        listed = json.loads(await cli.ok("reports", "list", "--json"))
        assert listed[0]["reason"] == reason  # JSON output escapes by itself
        for bad in ("-1", "0", "x", "99999999999999999999"):
            with pytest.raises(SystemExit) as exited:  # argparse's usage error
                await cli("reports", "list", "--limit", bad)
            assert exited.value.code == 2
            assert "--limit" in capsys.readouterr().err
        assert len(json.loads(await cli.ok("reports", "list", "--json", "--limit", "1"))) == 1
