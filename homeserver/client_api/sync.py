"""GET /sync (initial and incremental), and stored filters.

What a response holds, per the spec's /sync:
1. ``rooms.join``: for each joined room with news since ``since`` (all of them on an
   initial sync), the newest ``timeline.limit`` accepted events (``limited`` when more
   were skipped, ``prev_batch`` to page back from), the state at the start of the
   timeline (all of it for an initial sync, a newly joined room or ``full_state``;
   otherwise the state changed in the skipped gap), typing and receipts, and the room's
   account data changed since ``since``. Timeline
   events the user may not see under history visibility are left out; backfilled
   history (negative stream orderings) is never news.
2. ``rooms.invite``: invites received since ``since``, with their stripped state.
2b. ``rooms.knock``: rooms knocked on since ``since``, with their stripped state (the
   resident's ``knock_room_state`` and the user's own knock); an invite or a leave moves
   the room to ``invite`` or ``leave``.
3. ``rooms.leave``: rooms left, kicked or banned from since ``since`` (on an initial
   sync only with ``include_leave``), with the timeline up to the leave.
4. ``account_data``: the user's global account data changed since ``since`` (all of it,
   and the default ``m.push_rules``, on an initial sync).
4b. ``device_lists``, ``device_one_time_keys_count``, ``device_unused_fallback_key_types``:
   ``E2eKeys.sync_section`` (e2e/service.py); a device-list change wakes the long-poll.
5. ``to_device``: the device's send-to-device messages (to_device.py ``ToDeviceSync``; a
   since-token acknowledges, and deletes, those up to its position).
6. ``next_batch``: the position to pass as ``since`` next time (tokens.py).

Long-poll: with ``since`` and ``timeout``, an empty answer waits on the Notifier (woken by
persisted events, local typing and receipts, and the user's account data changes) and is
recomputed when woken; no database polling. Each wait is bounded by
``client.max_sync_timeout_ms``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from typing import Any

from aiohttp import web

from homeserver.client_api.access import may_read_after_leaving
from homeserver.client_api.account_data import account_data_for_sync
from homeserver.client_api.common import Authenticator, Requester, query_bool, query_int
from homeserver.client_api.events import serialize_events
from homeserver.client_api.filtering import Filter, filter_events, parse_filter
from homeserver.client_api.ignored import ignored_users, inviter_of
from homeserver.client_api.presence import PresenceAPI
from homeserver.client_api.sync_rooms import RoomSections
from homeserver.client_api.sync_settle import settled_memberships, settled_received_memberships
from homeserver.client_api.to_device import ToDeviceSync
from homeserver.client_api.tokens import SyncToken, parse_sync_token
from homeserver.config import ClientConfig
from homeserver.e2e.service import E2eKeys
from homeserver.errors import MatrixError, forbidden
from homeserver.http import json_response, read_json_object
from homeserver.notifier import Notifier, Waiter
from homeserver.push.notify import NotificationPass, unread_sections
from homeserver.rooms.service import RoomService
from homeserver.rooms.store import ReceivedInvite, RoomMembershipStore
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.events import EventStore
from homeserver.storage.timeline import MembershipChange, Receipt, TimelineStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

MAX_FILTER_BYTES = 64 * 1024
# Filters (parsing, matching) live in filtering.py; one room's section in sync_rooms.py.
SyncFilter = Filter


def _pdu_as_client_event(pdu: dict[str, Any], event_id: str, room_id: str) -> dict[str, Any]:
    fields = ("content", "origin_server_ts", "sender", "type", "state_key")
    out: dict[str, Any] = {k: pdu[k] for k in fields if k in pdu}
    out["event_id"] = event_id
    out["room_id"] = room_id
    return out


class SyncAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, users: UserStore, events: EventStore,
        timeline: TimelineStore, invites: RoomMembershipStore, rooms: RoomService, notifier: Notifier,
        *, visibility: HistoryVisibility | None = None, account_data: AccountDataStore | None = None,
        clock: Clock = SYSTEM_CLOCK, e2e: E2eKeys | None = None, to_device: ToDeviceSync | None = None,
        push: NotificationPass | None = None, presence: PresenceAPI | None = None,
    ) -> None:
        self.push = push  # unread notification counts (push/notify.py)
        self.presence = presence  # set_presence and the presence section (client_api/presence.py)
        self.clock = clock
        self.e2e = e2e  # device lists and one-time key counts (e2e/service.py)
        self.to_device = to_device
        self.config = config
        self.visibility = visibility or HistoryVisibility(events)
        self.account_data = account_data or AccountDataStore(events.db)
        self.auth = auth
        self.users = users
        self.events = events
        self.timeline = timeline
        self.invites = invites
        self.rooms = rooms
        self.notifier = notifier
        self.sections = RoomSections(users, events, timeline, self.visibility, clock)

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3"
        return [
            web.get(f"{p}/sync", self.sync),
            web.post(f"{p}/user/{{user_id}}/filter", self.post_filter),
            web.get(f"{p}/user/{{user_id}}/filter/{{filter_id}}", self.get_filter),
        ]

    # ------------------------------------------------------------------ filters

    async def post_filter(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        if request.match_info["user_id"] != req.user_id:
            raise forbidden("You can only create filters for yourself")
        body = await read_json_object(request, min(MAX_FILTER_BYTES, self.config.max_body_bytes))
        parse_filter(body)
        filter_id = await self.users.store_filter(req.user_id, body)
        if filter_id is None:
            raise MatrixError(400, "M_LIMIT_EXCEEDED", "Too many filters stored for this user")
        return json_response({"filter_id": filter_id})

    async def get_filter(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        if request.match_info["user_id"] != req.user_id:
            raise forbidden("You can only read your own filters")
        found = await self.users.get_filter(req.user_id, request.match_info["filter_id"])
        if found is None:
            raise MatrixError(404, "M_NOT_FOUND", "No such filter")
        return json_response(found)

    async def _resolve_filter(self, req: Requester, raw: str | None) -> SyncFilter:
        if not raw:
            return SyncFilter()
        if raw.lstrip().startswith("{"):
            if len(raw) > MAX_FILTER_BYTES:
                raise MatrixError(400, "M_TOO_LARGE", "Filter too large")
            try:
                return parse_filter(json.loads(raw))
            except ValueError:
                raise MatrixError(400, "M_NOT_JSON", "Filter is not valid JSON") from None
        stored = await self.users.get_filter(req.user_id, raw)
        if stored is None:
            raise MatrixError(400, "M_INVALID_PARAM", "Unknown filter ID")
        return parse_filter(stored)

    # ------------------------------------------------------------------ /sync

    async def sync(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        raw_since = request.query.get("since")
        since = parse_sync_token(raw_since) if raw_since else None
        timeout_ms = query_int(request, "timeout", 0, low=0, high=self.config.max_sync_timeout_ms)
        full_state = query_bool(request, "full_state")
        flt = await self._resolve_filter(req, request.query.get("filter"))
        deadline = self.clock.monotonic() + timeout_ms / 1000
        presence = await self.presence.begin_sync(req.user_id, request.query, flt.presence) if self.presence else None
        if self.to_device is not None:
            await self.to_device.acknowledge(req, since)
        while True:
            waiter = self.notifier.waiter(req.user_id)
            try:
                body, changed = await self._compute(req, since, full_state, flt, waiter)
                if presence is not None:
                    changed = await presence.add_to(body, since) or changed
                remaining = deadline - self.clock.monotonic()
                if since is None or changed or full_state or remaining <= 0:
                    return json_response(body)
                if not await waiter.wait(remaining):
                    return json_response(body)
            finally:
                self.notifier.release(waiter)

    async def _compute(
        self, req: Requester, since: SyncToken | None, full_state: bool, flt: SyncFilter, waiter: Waiter
    ) -> tuple[dict[str, Any], bool]:
        user = req.user_id
        # Memberships first, watched before the positions are read, so that an event
        # committed after the positions were read always wakes the waiter.
        memberships = await self.rooms.rooms_for_user(user)
        memberships = {r: m for r, m in memberships.items() if flt.room.allows_room(r)}
        ignored = await ignored_users(self.account_data, user)
        joined = sorted(r for r, m in memberships.items() if m == "join")
        waiter.watch_rooms(joined)
        now_ms = self.clock.time_ms()
        token = SyncToken(
            await self.events.max_stream_ordering(), await self.invites.max_stream_id(), now_ms,
            await self.account_data.max_stream_id(),
            await self.e2e.lists.max_stream_id() if self.e2e is not None else 0,
        )
        since_pos = since.events if since is not None else 0
        since_ms = since.ephemeral_ms if since is not None else 0

        changes: dict[str, MembershipChange] = {}
        if since is not None:
            for change in await self.timeline.membership_changes(user, since_pos, token.events):
                changes[change.room_id] = change
        # A join committed after the memberships were read but within the token (see sync_settle).
        settled = await settled_memberships(self.rooms, self.timeline, user, memberships,
                                            changes if since is not None else None, token.events,
                                            flt.room.allows_room)
        if settled is not None:
            memberships = settled
            joined = sorted(r for r, m in memberships.items() if m == "join")
            waiter.watch_rooms(joined)
        remote_rows = {
            row.room_id: row
            for row in await self.invites.invites_for_user(user, since.invites if since is not None else 0)
            if flt.room.allows_room(row.room_id)
        }
        settled = await settled_received_memberships(self.rooms, user, memberships, remote_rows)
        if settled is not None:  # received after the memberships were read (see sync_settle)
            memberships = settled

        # 1. Joined rooms.
        if since is None:
            active = set(joined)
            typing_rooms = set(joined)
        else:
            active = await self.timeline.rooms_with_events(joined, since_pos, token.events)
            typing_rooms = await self.timeline.rooms_with_typing_changes(joined, since_ms, now_ms)
        receipts: dict[str, list[Receipt]] = defaultdict(list)
        for receipt in await self.timeline.receipts(joined, since_ms, now_ms):
            if receipt.receipt_type != "m.read.private" or receipt.user_id == user:
                receipts[receipt.room_id].append(receipt)
        # Account data (global and per room) changed since the token; all of it initially.
        global_data, room_data = await account_data_for_sync(
            self.account_data, user, since.account_data if since is not None else None, token.account_data
        )
        join: dict[str, Any] = {}
        unread = await self.push.unread_counts(user) if self.push is not None else {}
        for room_id in joined:
            newly = False
            if since is not None and room_id in changes:
                before = await self.timeline.latest_membership(user, room_id, since_pos)
                newly = before is None or before.membership != "join"
            if not (room_id in active or newly or full_state or room_id in typing_rooms or room_id in receipts
                    or room_id in room_data):
                continue
            section = await self._room_section(
                req, room_id, since_pos, token.events, flt,
                full=since is None or newly or full_state, ignored=ignored,
            )
            ephemeral: list[dict[str, Any]] = []
            if room_id in typing_rooms:
                ephemeral.append({"type": "m.typing",
                                  "content": {"user_ids": await self.timeline.typing_users(room_id, now_ms)}})
            if receipts.get(room_id):
                ephemeral.append(_receipt_event(receipts[room_id]))
            ephemeral = filter_events(flt.room.ephemeral, ephemeral, room_id)
            section["ephemeral"] = {"events": ephemeral}
            section["account_data"] = {"events": filter_events(flt.room.account_data, room_data.get(room_id, []),
                                                               room_id)}
            section["unread_notifications"] = {}
            section.update(unread_sections(unread.get(room_id, {}), flt.unread_thread_notifications))
            if (section["timeline"]["events"] or section["state"]["events"] or ephemeral
                    or section["account_data"]["events"] or since is None or newly):
                join[room_id] = section

        # 2. Invites: to rooms we are in (member events), and received over federation. The
        # received rows were read after the memberships: an invite or knock they show ended
        # meanwhile (a kick that arrived during this sync) goes under leave only.
        invite: dict[str, Any] = {}
        for room_id, membership in memberships.items():
            if membership != "invite" or _ended(remote_rows.get(room_id)):
                continue
            if since is not None and room_id not in changes and room_id not in remote_rows:
                continue
            if ignored and await inviter_of(self.rooms, user, room_id) in ignored:
                continue  # invites from ignored users are not shown
            invite[room_id] = {"invite_state": {"events": await self._invite_state(user, room_id)}}

        # 2b. Knocks: on rooms we are in (member events), and over federation.
        knock: dict[str, Any] = {}
        for room_id, membership in memberships.items():
            if membership != "knock" or _ended(remote_rows.get(room_id)):
                continue
            if since is not None and room_id not in changes and room_id not in remote_rows:
                continue
            knock[room_id] = {"knock_state": {"events": await self.rooms.get_invite_state(user, room_id, "knock")}}

        # 3. Rooms left (kick, ban, leave, rejected invite).
        leave: dict[str, Any] = {}
        for room_id, membership in memberships.items():
            if membership not in ("leave", "ban"):
                continue
            if since is None and not flt.include_leave:
                continue
            left = changes.get(room_id)
            if since is not None and left is None:
                continue
            if left is None:
                left = await self.timeline.latest_membership(user, room_id)
            if left is None:
                continue
            if not await may_read_after_leaving(self.events, user, left.event_id):
                # Never joined (a ban or a rejected invite): their own member event only.
                leave[room_id] = await self._own_member_section(req, left.event_id)
                continue
            leave[room_id] = await self._room_section(
                req, room_id, since_pos, left.stream_ordering, flt, full=since is None, ignored=ignored
            )
        for room_id, row in remote_rows.items():
            if row.membership in ("leave", "ban") and room_id not in leave and memberships.get(room_id) != "join":
                leave[room_id] = _rejected_invite_section(row)

        global_data = filter_events(flt.account_data, global_data)
        to_device: list[dict[str, Any]] = []
        if self.to_device is not None:
            to_device, position = await self.to_device.section(req, since)
            token = replace(token, to_device=position)
        body: dict[str, Any] = {
            "next_batch": token.encode(),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
            "presence": {"events": []},
            "account_data": {"events": global_data},
            "to_device": {"events": to_device},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }
        e2e_changed = False
        if self.e2e is not None and req.device_id is not None:
            section = await self.e2e.sync_section(
                user, req.device_id, (since.device_lists, since.events) if since is not None else None,
                (token.device_lists, token.events),
            )
            body.update(section)
            e2e_changed = bool(section["device_lists"]["changed"] or section["device_lists"]["left"])
        return body, bool(join or invite or leave or knock or global_data or e2e_changed or to_device)

    async def _room_section(
        self, req: Requester, room_id: str, since_pos: int, upto: int, flt: SyncFilter, *, full: bool,
        ignored: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Timeline, state and summary of one room, as the filter asks (sync_rooms.py)."""
        return await self.sections.section(req, room_id, since_pos, upto, flt, full=full, ignored=ignored)

    async def _own_member_section(self, req: Requester, event_id: str) -> dict[str, Any]:
        """A left room the user may not read: the member event that ended their membership."""
        stored = await self.events.get_event(event_id)
        events = [stored] if stored is not None else []
        return {
            "timeline": {
                "events": await serialize_events(
                    self.users, self.events, req, events, clock=self.clock, include_room_id=False
                ),
                "limited": False,
            },
            "state": {"events": []},
        }

    async def _invite_state(self, user_id: str, room_id: str) -> list[dict[str, Any]]:
        return await self.rooms.get_invite_state(user_id, room_id)


def _receipt_event(receipts: list[Receipt]) -> dict[str, Any]:
    content: dict[str, dict[str, dict[str, Any]]] = {}
    for r in receipts:
        for event_id in r.event_ids:
            content.setdefault(event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = dict(r.data)
    return {"type": "m.receipt", "content": content}


def _ended(row: ReceivedInvite | None) -> bool:
    """Whether a received invite or knock row (read after the memberships) shows it ended."""
    return row is not None and row.membership in ("leave", "ban")


def _rejected_invite_section(row: ReceivedInvite) -> dict[str, Any]:
    event = _pdu_as_client_event(row.event, row.event_id, row.room_id)
    return {"timeline": {"events": [event], "limited": False}, "state": {"events": []}}
