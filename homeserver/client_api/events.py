"""Events for clients: sending messages (idempotent per device and txnId), setting state,
paginating a room's timeline (/messages) and fetching one event.

Guarantees: a PUT /send retried with the same (user, device, txnId) returns the first
event ID and creates nothing new (a per-key lock covers concurrent retries in this
process; the stored mapping covers later ones); clients only ever see ACCEPTED events,
a former member sees nothing after their leave, and every event shown passes history
visibility (``rooms/visibility.py``). A backwards page that reaches the oldest event we
hold backfills the room's earlier history over federation (``rooms/backfill.py``, bounded
in time), then pages on into it; ``end`` is given while more history may be had.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from homeserver.client_api.access import room_access
from homeserver.client_api.bundles import add_bundles
from homeserver.client_api.common import (
    Authenticator,
    Requester,
    client_event,
    room_errors,
)
from homeserver.client_api.ignored import ignored_users
from homeserver.client_api.paging import FILTER_READ_FACTOR, filtered_page, keep, lazy_member_state, room_event_filter
from homeserver.client_api.tokens import FIRST_POSITION, page_token, parse_page_token
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, not_found
from homeserver.events.event import Event
from homeserver.http import json_response, read_json_object
from homeserver.rooms.backfill import Backfiller
from homeserver.rooms.redactions import applied_redactions, hide_unapplied
from homeserver.rooms.service import RoomService
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.database import Connection
from homeserver.storage.events import EventStore, Outcome, StoredEvent
from homeserver.storage.timeline import TimelineStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.locks import KeyedLock

log = logging.getLogger(__name__)

MAX_TXN_ID_LENGTH = 255
MAX_PAGE = 1000
# Backfill requests one /messages request may make (each bounded; all within backfill.timeout).
BACKFILL_ROUNDS = 3


async def serialize_events(
    users: UserStore, store: EventStore, requester: Requester, events: Sequence[StoredEvent], *,
    clock: Clock, include_room_id: bool = True,
) -> list[dict[str, Any]]:
    """Client events, with ``unsigned.transaction_id`` on those this device sent, and
    redacted where an allowed redaction of them is accepted (``rooms/redactions.py``)."""
    own = [se.event.event_id for se in events if se.event.sender == requester.user_id]
    txns = await users.txn_ids_for_events(requester.user_id, requester.device_id, own) if own else {}
    redactions = await applied_redactions(store, (se.event for se in events))
    now = clock.time_ms()
    served = [
        client_event(se.event, transaction_id=txns.get(se.event.event_id), now_ms=now,
                     include_room_id=include_room_id, redacted_because=redactions.get(se.event.event_id))
        for se in events
    ]
    # Bundled aggregations (unsigned.m.relations): one look-up for the page.
    await add_bundles(store, requester.user_id, events, served, now_ms=now, include_room_id=include_room_id,
                      redacted=redactions)
    return served


def _txn_id(request: web.Request) -> str:
    txn_id = request.match_info["txn_id"]
    if not txn_id or len(txn_id) > MAX_TXN_ID_LENGTH:
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid transaction ID")
    return txn_id


class EventsAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, rooms: RoomService, events: EventStore,
        timeline: TimelineStore, users: UserStore, *, backfiller: Backfiller | None = None,
        visibility: HistoryVisibility | None = None, backfill_timeout: float = 10.0,
        clock: Clock = SYSTEM_CLOCK, account_data: AccountDataStore | None = None,
    ) -> None:
        self.account_data = account_data or AccountDataStore(events.db)
        self.clock = clock
        self.config = config
        self.backfiller = backfiller
        self.visibility = visibility or HistoryVisibility(events)
        self.backfill_timeout = backfill_timeout
        self.auth = auth
        self.rooms = rooms
        self.events = events
        self.timeline = timeline
        self.users = users
        self._txn_locks: KeyedLock[tuple[str, str, str]] = KeyedLock()

    def routes(self) -> list[web.RouteDef]:
        r = "/_matrix/client/v3/rooms/{room_id}"
        return [
            web.put(f"{r}/send/{{event_type}}/{{txn_id}}", self.send),
            web.put(f"{r}/redact/{{event_id}}/{{txn_id}}", self.redact),
            web.put(f"{r}/state/{{event_type}}", self.put_state),
            web.put(f"{r}/state/{{event_type}}/{{state_key:.*}}", self.put_state),
            web.get(f"{r}/messages", self.messages),
            web.get(f"{r}/event/{{event_id}}", self.get_event),
            web.get(f"{r}/context/{{event_id}}", self.context),
        ]

    async def send(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        event_type = request.match_info["event_type"]
        txn_id = _txn_id(request)
        content = await read_json_object(request, self.config.max_body_bytes)
        return await self._send_once(req, txn_id, room_id, event_type, content)

    async def redact(self, request: web.Request) -> web.Response:
        """Redact an event: an ``m.room.redaction`` (idempotent per device and txnId like
        /send); the target is named in its content (room v11 and later) or at the top."""
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        target = request.match_info["event_id"]
        txn_id = _txn_id(request)
        if not target.startswith("$"):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid event ID")
        body = await read_json_object(request, self.config.max_body_bytes)
        content: dict[str, Any] = {"redacts": target}
        reason = body.get("reason")
        if reason is not None:
            if not isinstance(reason, str):
                raise MatrixError(400, "M_BAD_JSON", "reason must be a string")
            content["reason"] = reason
        # RoomService.send_event checks that the user may redact the target.
        return await self._send_once(req, txn_id, room_id, "m.room.redaction", content)

    async def _send_once(
        self, req: Requester, txn_id: str, room_id: str, event_type: str, content: Mapping[str, Any],
    ) -> web.Response:
        """One effect per (user, device, txnId): the lock orders concurrent retries, and
        the txnId is recorded in the transaction that stores the event, so a crash cannot
        leave an event whose retry would send it again."""
        async with self._txn_locks((req.user_id, req.device_id, txn_id)):
            existing = await self.users.get_txn_event(req.user_id, req.device_id, txn_id)
            if existing is not None:
                return json_response({"event_id": existing})

            async def record(conn: Connection, event: Event) -> None:
                await self.users.store_txn_event(req.user_id, req.device_id, txn_id, event.event_id, conn)

            with room_errors():
                event = await self.rooms.send_event(req.user_id, room_id, event_type, content, also=record)
            # Paths that do not persist through the builder (a remote invite) record it here.
            await self.users.store_txn_event(req.user_id, req.device_id, txn_id, event.event_id)
        return json_response({"event_id": event.event_id})

    async def put_state(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        content = await read_json_object(request, self.config.max_body_bytes)
        with room_errors():
            event = await self.rooms.send_event(
                req.user_id, room_id, request.match_info["event_type"], content,
                state_key=request.match_info.get("state_key", ""),
            )
        return json_response({"event_id": event.event_id})

    async def messages(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        direction = request.query.get("dir")
        if direction not in ("b", "f"):
            raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
        try:
            limit = int(request.query.get("limit") or 10)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
        want = max(1, min(MAX_PAGE, limit))
        flt = room_event_filter(request.query.get("filter"))
        ignored = await ignored_users(self.account_data, req.user_id)
        # A filter (or ignored senders) reads a larger page and keeps what passes (filtered_page).
        limit = want if flt.is_everything and not ignored else min(MAX_PAGE, want * FILTER_READ_FACTOR)
        raw_from, raw_to = request.query.get("from"), request.query.get("to")
        from_pos = parse_page_token(raw_from) if raw_from else None
        to_pos = parse_page_token(raw_to) if raw_to else None
        access = await room_access(self.timeline, req.user_id, room_id)
        now = access.upto if access.upto is not None else await self.events.max_stream_ordering()
        end: str | None
        if direction == "b":
            start = now if from_pos is None else min(from_pos, now)
            after = FIRST_POSITION if to_pos is None else to_pos
            chunk = await self.timeline.room_events(room_id, after=after, upto=start, limit=limit, newest_first=True)
            more = False
            if len(chunk) < limit and to_pos is None and self.backfiller is not None:
                # The oldest event we hold is reached: fetch earlier history from the room's
                # servers (bounded), then page on into it.
                chunk, more = await self._backfill(room_id, start, limit, chunk)
            if len(chunk) == limit:
                end = page_token(chunk[-1].stream_ordering - 1)
            elif more:  # history may go further back: the client asks again, we fetch more
                end = page_token(chunk[-1].stream_ordering - 1 if chunk else start)
            else:
                end = None
        else:
            start = FIRST_POSITION if from_pos is None else from_pos
            upto = now if to_pos is None else min(to_pos, now)
            chunk = await self.timeline.room_events(room_id, after=start, upto=upto, limit=limit, newest_first=False)
            end = page_token(chunk[-1].stream_ordering) if len(chunk) == limit else None
        if limit != want:
            chunk, end = filtered_page(chunk, want, flt, ignored, end, backwards=direction == "b")
        visible = await hide_unapplied(self.events, await self.visibility.filter_for_user(req.user_id, room_id, chunk))
        body: dict[str, Any] = {
            "start": raw_from or page_token(start),
            "chunk": await serialize_events(self.users, self.events, req, visible, clock=self.clock),
        }
        if end is not None:
            body["end"] = end
        if flt.lazy_load_members:
            body["state"] = await serialize_events(
                self.users, self.events, req, await lazy_member_state(self.events, room_id, visible), clock=self.clock)
        return json_response(body)

    async def _backfill(
        self, room_id: str, start: int, limit: int, chunk: list[StoredEvent]
    ) -> tuple[list[StoredEvent], bool]:
        """Backfill until the page is full, nothing more comes, or the time is up; return
        the page and whether more history may be had."""
        assert self.backfiller is not None
        deadline = self.clock.monotonic() + self.backfill_timeout
        more = False
        for _ in range(BACKFILL_ROUNDS):
            left = deadline - self.clock.monotonic()
            if left <= 0:
                break
            try:
                result = await self.backfiller.backfill(room_id, timeout=left)
            except Exception:
                # Backfill is best effort: /messages answers with what we hold.
                log.exception("backfill failed", extra={"room_id": room_id})
                break
            if not result.stored:
                break
            more = True
            chunk = await self.timeline.room_events(
                room_id, after=FIRST_POSITION, upto=start, limit=limit, newest_first=True
            )
            if len(chunk) == limit:
                break
        return chunk, more

    async def _visible_event(self, req: Requester, room_id: str, event_id: str) -> tuple[StoredEvent, int]:
        """The event, if the user may see it; and the last position they may see."""
        access = await room_access(self.timeline, req.user_id, room_id)
        stored = await self.events.get_event(event_id)
        if (
            stored is None
            or stored.event.room_id != room_id
            or stored.outcome is not Outcome.ACCEPTED
            or (access.upto is not None and stored.stream_ordering > access.upto)
            or not await self.visibility.user_may_see_event(req.user_id, stored)
        ):
            raise not_found("Event not found")
        upto = access.upto if access.upto is not None else await self.events.max_stream_ordering()
        return stored, upto

    async def get_event(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        stored, _ = await self._visible_event(req, request.match_info["room_id"], request.match_info["event_id"])
        return json_response((await serialize_events(self.users, self.events, req, [stored], clock=self.clock))[0])

    async def context(self, request: web.Request) -> web.Response:
        """An event with up to ``limit`` events around it (half before, half after, as far
        as the user may see), pagination tokens either way, and the room's state after
        the last event returned."""
        req = await self.auth.requester(request)
        room_id = request.match_info["room_id"]
        try:
            limit = int(request.query.get("limit") or 10)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
        if limit < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must not be negative")
        limit = min(MAX_PAGE, limit)
        flt = room_event_filter(request.query.get("filter"))
        ignored = await ignored_users(self.account_data, req.user_id)
        stored, upto = await self._visible_event(req, room_id, request.match_info["event_id"])
        position = stored.stream_ordering
        before: list[StoredEvent] = []
        after: list[StoredEvent] = []
        if limit // 2:
            before = await self.timeline.room_events(
                room_id, after=FIRST_POSITION, upto=position - 1, limit=limit // 2, newest_first=True)
        if limit - limit // 2:
            after = await self.timeline.room_events(
                room_id, after=position, upto=upto, limit=limit - limit // 2, newest_first=False)
        # Tokens from the events found, before visibility hides any: paging on from them
        # neither repeats nor skips one.
        start = page_token((before[-1].stream_ordering if before else position) - 1)
        end = page_token(after[-1].stream_ordering if after else position)
        before = await hide_unapplied(self.events, await self.visibility.filter_for_user(req.user_id, room_id, before))
        after = await hide_unapplied(self.events, await self.visibility.filter_for_user(req.user_id, room_id, after))
        before = [se for se in before if keep(se, flt, ignored)]
        after = [se for se in after if keep(se, flt, ignored)]
        last = after[-1] if after else stored
        state_ids = await self.events.get_state_ids_after(last.event.event_id) or {}
        if flt.lazy_load_members:  # only the members of the events' senders
            senders = {se.event.sender for se in (*before, stored, *after)}
            state_ids = {k: v for k, v in state_ids.items() if k[0] != "m.room.member" or k[1] in senders}
        found = await self.events.get_events(state_ids.values())
        state = [found[i] for i in state_ids.values() if i in found and found[i].outcome is not Outcome.REJECTED]
        served = await serialize_events(
            self.users, self.events, req, [*before, stored, *after, *state], clock=self.clock
        )
        return json_response({
            "start": start,
            "end": end,
            "events_before": served[: len(before)],
            "event": served[len(before)],
            "events_after": served[len(before) + 1 : len(before) + 1 + len(after)],
            "state": served[len(before) + 1 + len(after) :],
        })
