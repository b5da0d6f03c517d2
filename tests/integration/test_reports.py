"""Reporting events and rooms (issue 22): stored for operators, listed by ``homeserver
reports list``; 404 for what the reporter cannot see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homeserver.storage.reports import ReportStore
from tests.clients import nio_user, raw
from tests.conftest import DatabaseFactory
from tests.integration.test_cli_users import Cli
from tests.procs import write_config
from tests.servers import make_config, running_server

V3 = "/_matrix/client/v3"


async def test_reports_are_stored_and_listed(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    cli = Cli(write_config(config, tmp_path / "hs.yaml"), capsys, monkeypatch, tmp_path)
    async with running_server(config) as s, nio_user(s, "alice") as alice, nio_user(s, "bob") as bob:
        ta, tb = alice.access_token, bob.access_token
        room = (await raw(s, "POST", f"{V3}/createRoom", token=ta, json={}))[1]["room_id"]
        status, sent = await raw(s, "PUT", f"{V3}/rooms/{room}/send/m.room.message/t1", token=ta,
                                 json={"msgtype": "m.text", "body": "spam"})
        event = sent["event_id"]

        assert await raw(s, "POST", f"{V3}/rooms/{room}/report/{event}", token=ta,
                         json={"reason": "spam", "score": -100}) == (200, {})
        assert await raw(s, "POST", f"{V3}/rooms/{room}/report", token=ta, json={"reason": "bad room"}) == (200, {})
        # Bob is not in the room: the event is not found for him, as an unknown event is.
        for token, target in ((tb, event), (ta, "$nope")):
            status, reply = await raw(s, "POST", f"{V3}/rooms/{room}/report/{target}", token=token, json={})
            assert (status, reply["errcode"]) == (404, "M_NOT_FOUND")
        status, reply = await raw(s, "POST", f"{V3}/rooms/!unknown:nowhere/report", token=ta, json={})
        assert (status, reply["errcode"]) == (404, "M_NOT_FOUND")
        for bad in ({"score": 5}, {"score": "low"}, {"reason": 3}):
            status, reply = await raw(s, "POST", f"{V3}/rooms/{room}/report/{event}", token=ta, json=bad)
            assert status == 400, bad

        stored = await ReportStore(s.services.db).list()
        assert [(r.user_id, r.event_id, r.reason, r.score) for r in stored] == [
            (alice.user_id, None, "bad room", None), (alice.user_id, event, "spam", -100)]

        listed = json.loads(await cli.ok("reports", "list", "--json"))
        assert [(r["room_id"], r["event_id"], r["reason"]) for r in listed] == [
            (room, None, "bad room"), (room, event, "spam")]
        table = await cli.ok("reports", "list")
        assert "spam" in table and event in table
