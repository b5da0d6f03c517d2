"""Reporting content to the server's operators: ``POST /rooms/{roomId}/report/{eventId}``
(``reason`` and ``score`` optional) and ``POST /rooms/{roomId}/report`` (spec 1.13,
``reason``).

Reports are stored (storage/reports.py) for operators, who list them with ``homeserver
reports list``. An event report answers 404 M_NOT_FOUND for an event the user may not see
(unknown, in another room, rejected, past their leave, or hidden by history visibility),
so a report cannot probe for events; a room report answers 404 for a room this server
does not know. Bounds: ``reason`` at most ``MAX_REASON`` characters, ``score`` an integer
in [-100, 0], at most ``MAX_REPORTS_PER_HOUR`` reports per user per hour (429 after).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.client_api.access import room_access
from homeserver.client_api.common import Authenticator
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, not_found
from homeserver.http import json_response, read_json_object
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.reports import ReportStore
from homeserver.storage.timeline import TimelineStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.locks import KeyedLock

MAX_REASON = 4096
MAX_REPORTS_PER_HOUR = 100
HOUR_MS = 3_600_000


def parse_report(body: dict[str, Any], *, with_score: bool) -> tuple[str | None, int | None]:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise MatrixError(400, "M_BAD_JSON", "reason must be a string")
    if reason is not None and len(reason) > MAX_REASON:
        raise MatrixError(400, "M_INVALID_PARAM", f"reason is longer than {MAX_REASON} characters")
    score = body.get("score") if with_score else None
    if score is not None and (isinstance(score, bool) or not isinstance(score, int) or not -100 <= score <= 0):
        raise MatrixError(400, "M_INVALID_PARAM", "score must be an integer between -100 and 0")
    return reason, score


class ReportsAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, events: EventStore, timeline: TimelineStore,
        visibility: HistoryVisibility, store: ReportStore, *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.auth = auth
        self.events = events
        self.timeline = timeline
        self.visibility = visibility
        self.store = store
        self.clock = clock
        # The hourly cap's count and the insert, one user at a time (reports sent all at
        # once would otherwise all pass the count before any is stored).
        self._locks: KeyedLock[str] = KeyedLock()

    def routes(self) -> list[web.RouteDef]:
        r = "/_matrix/client/v3/rooms/{room_id}/report"
        return [web.post(f"{r}/{{event_id}}", self.report_event), web.post(r, self.report_room)]

    async def _store(self, user_id: str, room_id: str, event_id: str | None, reason: str | None,
                     score: int | None) -> web.Response:
        async with self._locks(user_id):
            now = self.clock.time_ms()
            if await self.store.count_since(user_id, now - HOUR_MS) >= MAX_REPORTS_PER_HOUR:
                raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many reports", retry_after_ms=HOUR_MS // 10)
            await self.store.add(user_id, room_id, event_id, reason, score, now)
        return json_response({})

    async def report_event(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
        body = await read_json_object(request, self.config.max_body_bytes)
        reason, score = parse_report(body, with_score=True)
        try:
            access = await room_access(self.timeline, req.user_id, room_id)
        except MatrixError:
            raise not_found("Event not found") from None
        stored = await self.events.get_event(event_id)
        if (
            stored is None
            or stored.event.room_id != room_id
            or stored.outcome is not Outcome.ACCEPTED
            or (access.upto is not None and stored.stream_ordering > access.upto)
            or not await self.visibility.user_may_see_event(req.user_id, stored)
        ):
            raise not_found("Event not found")
        return await self._store(req.user_id, room_id, event_id, reason, score)

    async def report_room(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        body = await read_json_object(request, self.config.max_body_bytes)
        reason, _ = parse_report(body, with_score=False)
        if not room_id.startswith("!") or await self.events.get_room_version(room_id) is None:
            raise not_found("Room not found")
        return await self._store(req.user_id, room_id, None, reason, None)
