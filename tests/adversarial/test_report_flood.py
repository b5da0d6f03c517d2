"""At most 100 reports per user per hour: the count and the insert were two steps, so
reports sent all at once all passed the count before any was stored. Both engines."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

from homeserver.client_api.reports import MAX_REPORTS_PER_HOUR
from homeserver.storage.reports import ReportStore
from tests.clients import client_server, raw
from tests.conftest import DatabaseFactory

C = "/_matrix/client/v3"


async def test_concurrent_reports_stay_within_the_hourly_cap(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "s", test_ca) as server:
        status, body = await raw(server, "POST", C + "/register", json={
            "username": "alice", "password": "correct horse battery", "auth": {"type": "m.login.dummy"}})
        assert status == 200, body
        token = body["access_token"]
        status, body = await raw(server, "POST", C + "/createRoom", token=token, json={})
        assert status == 200, body
        room = quote(body["room_id"])
        replies = await asyncio.gather(*(
            raw(server, "POST", f"{C}/rooms/{room}/report", token=token, json={"reason": f"r{i}"})
            for i in range(MAX_REPORTS_PER_HOUR + 30)))
        statuses = [status for status, _ in replies]
        assert statuses.count(200) == MAX_REPORTS_PER_HOUR, statuses
        assert set(statuses) == {200, 429}
        assert len(await ReportStore(server.services.db).list(limit=1000)) == MAX_REPORTS_PER_HOUR
