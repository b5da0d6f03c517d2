"""Inbound federation HTTP handlers: ``PUT /send`` and the room endpoints other servers read.

``/send`` answers from the durable inbox and does only what must happen before the reply:
the X-Matrix signature (checked by the middleware), the body's shape and bounds, the
(origin, txnId) de-duplication, a look-up of which PDUs we already hold, and one database
transaction that records the transaction and enqueues its PDUs and EDUs. No outbound
request, no PDU signature check, no authorization and no state resolution run before the
reply; the inbound worker does all of that.

The read endpoints (``/event``, ``/state``, ``/state_ids``, ``/event_auth``,
``/get_missing_events``, ``/backfill``) answer only servers in the room (or, per history
visibility, servers that may see the event: see ``rooms/visibility.py``). ``/backfill``,
``/get_missing_events`` and ``/event`` give an event a server in the room may not see
redacted. What they return is a reply, never a relay: nothing here sends anything anywhere.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from homeserver.config import InboundConfig
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.events.canonical import integral_floats_to_ints
from homeserver.events.errors import EventError
from homeserver.events.event import Event, StateKey
from homeserver.events.hashes import compute_event_id
from homeserver.events.identifiers import server_name_of
from homeserver.events.redaction import redact
from homeserver.events.versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.federation.auth import BODY, FLOAT_FREE, ORIGIN, PDU_TEXTS
from homeserver.federation.pipeline.edus import receipt_fields, short_id, to_device_edu
from homeserver.federation.worker import InboundWorker
from homeserver.http import json_response
from homeserver.metrics import Metrics
from homeserver.presence.edus import presence_edu
from homeserver.rooms.acl import AclChecker
from homeserver.rooms.redactions import applied_redactions, served_pdus
from homeserver.rooms.store import RoomMembershipStore, ended_member
from homeserver.rooms.visibility import HistoryVisibility, ServerView
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.inbox import InboxStore, PendingPdu
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.lru import LruCache

log = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
MAX_TXN_ID_BYTES = 255
ECHO_WARNING_INTERVAL_SECONDS = 60.0
# get_missing_events and backfill return at most this many events.
MAX_MISSING_EVENTS = 100
MAX_BACKFILL = 100
# EDU types the worker keeps; other types are acknowledged and ignored.
KEPT_EDU_TYPES = (
    "m.typing", "m.receipt", "m.device_list_update", "m.signing_key_update", "m.direct_to_device", "m.presence",
)
# The device-list EDUs (e2e/service.py applies them), kept whole below this size.
DEVICE_EDU_TYPES = ("m.device_list_update", "m.signing_key_update")
MAX_DEVICE_EDU_BYTES = 64 * 1024
# Receipts one m.receipt EDU may carry; the rest are dropped (counted as malformed).
MAX_RECEIPTS_PER_EDU = 500


def _server_of(user_id: object) -> str | None:
    return server_name_of(user_id) if isinstance(user_id, str) and ":" in user_id else None


class EchoMonitor:
    """Counts PDUs a peer sent that we already held; names the peer in a warning each
    time its count crosses another ``threshold``, at most once a minute per peer."""

    def __init__(
        self, threshold: int, metrics: Metrics, max_peers: int = 10_000, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._threshold = threshold
        self._metrics = metrics
        self._clock = clock
        # origin -> (duplicates, count at the last warning, monotonic time of that warning)
        self._counts: LruCache[str, tuple[int, int, float]] = LruCache(max_peers)

    def record(self, origin: str, duplicates: int) -> None:
        if duplicates <= 0:
            return
        self._metrics.inbound_duplicate_pdus.labels(origin).inc(duplicates)
        self._metrics.inbound_pdus_dropped.labels(origin, "duplicate").inc(duplicates)
        count, warned_at_count, warned_ts = self._counts.get(origin, (0, 0, 0.0))
        count += duplicates
        now = self._clock.monotonic()
        if count - warned_at_count >= self._threshold and now - warned_ts >= ECHO_WARNING_INTERVAL_SECONDS:
            log.warning(
                "peer keeps sending events we already hold",
                extra={"origin": origin, "duplicates": count},
            )
            warned_at_count, warned_ts = count, now
        self._counts[origin] = (count, warned_at_count, warned_ts)


class FederationTransport:
    def __init__(
        self,
        server_name: str,
        config: InboundConfig,
        store: EventStore,
        inbox: InboxStore,
        worker: InboundWorker | None,
        metrics: Metrics,
        memberships: RoomMembershipStore,
        acl: AclChecker,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self._clock = clock
        self._config = config
        self._store = store
        self._memberships = memberships
        self._acl = acl
        self._inbox = inbox
        self._worker = worker
        self._metrics = metrics
        self.echoes = EchoMonitor(config.duplicate_warning_threshold, metrics, clock=clock)
        self._visibility = HistoryVisibility(store)

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/federation/v1"
        return [
            web.put(p + "/send/{txnId}", self.on_send),
            web.get(p + "/event/{eventId}", self.on_event),
            web.get(p + "/state/{roomId}", self.on_state),
            web.get(p + "/state_ids/{roomId}", self.on_state_ids),
            web.get(p + "/event_auth/{roomId}/{eventId}", self.on_event_auth),
            web.post(p + "/get_missing_events/{roomId}", self.on_get_missing_events),
            web.get(p + "/backfill/{roomId}", self.on_backfill),
        ]

    # ------------------------------------------------------------------ /send

    async def on_send(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        origin = request[ORIGIN]
        txn_id = request.match_info["txnId"]
        # 1. Bounds and shape, before anything is looked up.
        if len(txn_id.encode("utf-8")) > MAX_TXN_ID_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", "txnId is too long")
        if request.content.total_bytes > self._config.max_transaction_bytes:
            raise MatrixError(
                413, "M_TOO_LARGE", f"Transaction exceeds {self._config.max_transaction_bytes} bytes"
            )
        body = request.get(BODY)
        pdus, edus = self._check_transaction(origin, body)
        self._metrics.inbound_transactions.labels(origin).inc()
        # 2. Each PDU: its room must be known here (room version, cached), then its ID.
        # Counters wait until we know the transaction is not a repeat.
        results: dict[str, dict[str, Any]] = {}
        pending: dict[str, PendingPdu] = {}
        drops: list[str] = []
        texts = request.get(PDU_TEXTS)
        float_free = bool(request.get(FLOAT_FREE, False))
        if not float_free:  # PDUs keep their floats as written; EDUs are read as ever
            edus = integral_floats_to_ints(edus)
        versions: dict[str, RoomVersion | None] = {}
        acl_allows: dict[str, bool] = {}
        for i, pdu in enumerate(pdus):
            text = texts[i].decode("utf-8") if texts is not None else None
            accepted = await self._admit_pdu(origin, pdu, results, drops, text, float_free, versions, acl_allows)
            if accepted is not None:
                pending.setdefault(accepted.event_id, accepted)
        kept_edus = [e for e in (self._admit_edu(origin, edu) for edu in edus) if e is not None]
        for event_id in pending:
            results[event_id] = {}
        # 3. One database transaction: a repeated transaction gets its first reply and
        # enqueues nothing; otherwise the de-duplication row and the inbox entries of the
        # PDUs we neither hold (echoes: answered {}, counted) nor have queued.
        admitted = await self._inbox.admit(origin, txn_id, {"pdus": results}, list(pending.values()), kept_edus)
        if admitted.repeated:
            self._metrics.inbound_repeated_transactions.labels(origin).inc()
            return json_response(admitted.response)
        self._metrics.inbound_pdus.labels(origin).inc(len(pdus))
        for reason in drops:
            self._metrics.inbound_pdus_dropped.labels(origin, reason).inc()
        self.echoes.record(origin, len(admitted.held) + len(admitted.queued))
        if admitted.enqueued:
            self._metrics.inbox_depth.inc(admitted.enqueued)
            if self._worker is not None:
                keys = {p.room_id for p in pending.values()}
                if kept_edus:
                    keys.add(f"edu {origin}")
                self._worker.notify(origin, keys)
        self._metrics.send_latency.observe(time.perf_counter() - started)
        return json_response(admitted.response)

    def _check_transaction(self, origin: str, body: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if not isinstance(body, dict):
            raise bad_json("The transaction must be a JSON object")
        if body.get("origin") != origin:
            raise forbidden("The transaction's origin is not the server that signed the request")
        ts = body.get("origin_server_ts")
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise bad_json("origin_server_ts must be an integer")
        pdus = body.get("pdus")
        if not isinstance(pdus, list):
            raise bad_json("pdus must be a list")
        if len(pdus) > MAX_PDUS:
            raise bad_json(f"A transaction carries at most {MAX_PDUS} PDUs")
        if not all(isinstance(p, dict) for p in pdus):
            raise bad_json("Each PDU must be a JSON object")
        edus = body.get("edus", [])
        if edus is None:
            edus = []
        if not isinstance(edus, list):
            raise bad_json("edus must be a list")
        if len(edus) > MAX_EDUS:
            raise bad_json(f"A transaction carries at most {MAX_EDUS} EDUs")
        for edu in edus:
            if not isinstance(edu, dict) or not isinstance(edu.get("edu_type"), str):
                raise bad_json("Each EDU must be an object with a string edu_type")
        return pdus, edus

    async def _admit_pdu(
        self, origin: str, pdu: dict[str, Any], results: dict[str, dict[str, Any]], drops: list[str],
        text: str | None, float_free: bool, versions: dict[str, RoomVersion | None],
        acl_allows: dict[str, bool],
    ) -> PendingPdu | None:
        """``versions``: the rooms' versions looked up so far for this transaction (an
        unknown room is a database look-up each time: once per transaction);
        ``acl_allows``: likewise, whether each room's server ACL allows the origin."""
        room_id = pdu.get("room_id")
        version: RoomVersion | None = None
        if isinstance(room_id, str):
            if room_id not in versions:
                versions[room_id] = await self._store.get_room_version(room_id)
            version = versions[room_id]
            if version is None:
                version = await self._out_of_band_version(pdu, room_id)
        if version is None:
            # Events of rooms we are not in do not come over /send (joins use send_join);
            # the entry is keyed by the ID the latest room version would give it.
            drops.append("unknown_room")
            self._drop(pdu, results, "Unknown room", DEFAULT_ROOM_VERSION, float_free)
            return None
        try:
            event_id = compute_event_id(pdu, version, float_free=float_free)
        except EventError:  # events/ raises only its own errors on a malformed PDU
            drops.append("malformed")
            return None  # no ID to key an entry by
        assert isinstance(room_id, str)
        allowed = acl_allows.get(room_id)
        if allowed is None:
            allowed = acl_allows[room_id] = await self._acl.allows(origin, room_id)
        if not allowed:
            drops.append("acl")
            results[event_id] = {"error": "The room's server ACL denies your server"}
            return None
        sender_server = _server_of(pdu.get("sender"))
        if self._config.strict_origin and sender_server != origin and not _strict_exempt(pdu):
            drops.append("foreign_sender")
            results[event_id] = {"error": "Event was not sent by a user of the origin server"}
            return None
        return PendingPdu(room_id, event_id, version.identifier, pdu, text)

    async def _out_of_band_version(self, pdu: dict[str, Any], room_id: str) -> RoomVersion | None:
        """A room we hold no state of: a kick or ban of one of our users who holds an invite
        to it or a knock on it is taken in (the worker ends that invite or knock), in the
        room version the invite or knock gave. One look-up, only for such member events."""
        target = ended_member(pdu)
        if target is None or server_name_of(target) != self.server_name:
            return None
        row = await self._memberships.pending(target, room_id)
        if row is None or row.room_version not in KNOWN_ROOM_VERSIONS:
            return None
        return KNOWN_ROOM_VERSIONS[row.room_version]

    def _drop(
        self, pdu: dict[str, Any], results: dict[str, dict[str, Any]], message: str, version: Any,
        float_free: bool,
    ) -> None:
        try:
            event_id = compute_event_id(pdu, version, float_free=float_free)
        except EventError:  # events/ raises only its own errors on a malformed PDU
            return
        results[event_id] = {"error": message}

    def _admit_edu(self, origin: str, edu: dict[str, Any]) -> dict[str, Any] | None:
        """Keep EDUs about the origin's own users, rebuilt from the fields we use and within
        bounds (``pipeline/edus.py``: IDs of at most 255 bytes, a receipt's ``data``
        reduced to ``ts`` and ``thread_id``, at most ``MAX_RECEIPTS_PER_EDU`` receipts);
        drop (and count) the rest. Whether the origin is in the room is the worker's check."""
        edu_type = edu["edu_type"]
        content = edu.get("content")
        if edu_type not in KEPT_EDU_TYPES:
            self._metrics.inbound_edus_dropped.labels(origin, "unhandled_type").inc()
            return None
        if not isinstance(content, dict):
            self._metrics.inbound_edus_dropped.labels(origin, "malformed").inc()
            return None
        if edu_type in DEVICE_EDU_TYPES:
            if _server_of(content.get("user_id")) != origin:
                self._metrics.inbound_edus_dropped.labels(origin, "foreign_user").inc()
                return None
            if len(json.dumps(content)) > MAX_DEVICE_EDU_BYTES:
                self._metrics.inbound_edus_dropped.labels(origin, "malformed").inc()
                return None
            return {"edu_type": edu_type, "content": content}
        if edu_type == "m.direct_to_device":
            kept_to_device, reason = to_device_edu(origin, content)
            if reason is not None:
                self._metrics.inbound_edus_dropped.labels(origin, reason).inc()
            return None if kept_to_device is None else {"edu_type": edu_type, "content": kept_to_device}
        if edu_type == "m.presence":  # the origin's users only, within bounds (presence/edus.py)
            presence = presence_edu(origin, content)
            if presence.foreign:
                self._metrics.inbound_edus_dropped.labels(origin, "foreign_user").inc(presence.foreign)
            if presence.malformed:
                self._metrics.inbound_edus_dropped.labels(origin, "malformed").inc(presence.malformed)
            return None if presence.content is None else {"edu_type": edu_type, "content": presence.content}
        if edu_type == "m.typing":
            room_id, user_id = content.get("room_id"), content.get("user_id")
            if _server_of(user_id) != origin or not isinstance(room_id, str):
                self._metrics.inbound_edus_dropped.labels(origin, "foreign_user").inc()
                return None
            if not short_id(room_id) or not short_id(user_id):
                self._metrics.inbound_edus_dropped.labels(origin, "malformed").inc()
                return None
            return {"edu_type": edu_type,
                    "content": {"room_id": room_id, "user_id": user_id, "typing": content.get("typing") is True}}
        # m.receipt: room -> receipt type -> user -> receipt; keep the origin's users only.
        kept: dict[str, Any] = {}
        dropped = malformed = count = 0
        for room_id, by_type in content.items():
            if not isinstance(by_type, dict) or not short_id(room_id):
                malformed += 1
                continue
            for receipt_type, by_user in by_type.items():
                if not isinstance(by_user, dict) or not short_id(receipt_type):
                    malformed += 1
                    continue
                for user_id, receipt in by_user.items():
                    if _server_of(user_id) != origin or not isinstance(receipt, dict):
                        dropped += 1
                        continue
                    fields = receipt_fields(receipt)
                    if fields is None or not short_id(user_id) or count >= MAX_RECEIPTS_PER_EDU:
                        malformed += 1
                        continue
                    event_ids, data = fields
                    count += 1
                    kept.setdefault(room_id, {}).setdefault(receipt_type, {})[user_id] = {
                        "event_ids": event_ids, "data": data,
                    }
        if dropped:
            self._metrics.inbound_edus_dropped.labels(origin, "foreign_user").inc(dropped)
        if malformed:
            self._metrics.inbound_edus_dropped.labels(origin, "malformed").inc(malformed)
        return {"edu_type": edu_type, "content": kept} if kept else None

    # ------------------------------------------------------------------ reads

    async def _require_room(self, origin: str, room_id: str) -> None:
        if await self._store.get_room_version(room_id) is None:
            raise not_found("Unknown room")
        if not await self._in_room(origin, room_id):
            raise forbidden("Your server is not in this room")

    async def _in_room(self, origin: str, room_id: str) -> bool:
        current = await self._store.get_current_state_ids(room_id)
        return origin in await self._store.joined_servers(current)

    async def _event_for(self, origin: str, event_id: str, room_id: str | None = None) -> tuple[Event, ServerView]:
        """The event and how ``origin`` may see it: a server in the room now gets every
        event (whole or redacted per history visibility); another server only the events
        it may see whole (say, from when it was in the room, or world_readable ones)."""
        stored = await self._store.get_event(event_id)
        if stored is None or (room_id is not None and stored.event.room_id != room_id):
            raise not_found("Unknown event")
        in_room = await self._in_room(origin, stored.event.room_id)
        views = await self._visibility.server_views(origin, [stored.event], in_room=in_room)
        view = views[stored.event.event_id]
        if view is not ServerView.FULL and not in_room:
            raise forbidden("Your server may not see this event")
        return stored.event, view

    async def _visible_event(self, origin: str, event_id: str, room_id: str | None = None) -> Event:
        return (await self._event_for(origin, event_id, room_id))[0]

    async def _as_seen_by(self, origin: str, events: list[Event]) -> list[dict[str, Any]]:
        """The PDUs of ``events`` as ``origin`` (a server in the room) may see them: whole,
        or redacted."""
        views = await self._visibility.server_views(origin, events, in_room=True)
        redactions = await applied_redactions(self._store, events)
        return [
            e.pdu if views.get(e.event_id) is ServerView.FULL and e.event_id not in redactions else _redacted(e)
            for e in events
        ]

    def _envelope(self, pdus: Iterable[Event]) -> dict[str, Any]:
        return {
            "origin": self.server_name,
            "origin_server_ts": self._clock.time_ms(),
            "pdus": [e.pdu for e in pdus],
        }

    async def on_event(self, request: web.Request) -> web.Response:
        event, view = await self._event_for(request[ORIGIN], request.match_info["eventId"])
        envelope = self._envelope([event])
        if view is not ServerView.FULL or await applied_redactions(self._store, [event]):
            envelope["pdus"] = [_redacted(event)]
        return json_response(envelope)

    async def _state_at(self, request: web.Request) -> tuple[dict[StateKey, str], set[str]]:
        room_id = request.match_info["roomId"]
        event_id = request.query.get("event_id")
        if not event_id:
            raise MatrixError(400, "M_MISSING_PARAM", "event_id is required")
        event = await self._visible_event(request[ORIGIN], event_id, room_id)
        # The state at the event: the state before it (what /state_ids gives a server that
        # lacks the event and must compute the state after it itself).
        state = await self._store.get_state_ids_before(event.event_id)
        if state is None:
            raise not_found("The state at this event is not known here")
        chain = await self._store.get_auth_chain_ids(state.values())
        return state, chain

    async def on_state_ids(self, request: web.Request) -> web.Response:
        state, chain = await self._state_at(request)
        return json_response({"pdu_ids": sorted(state.values()), "auth_chain_ids": sorted(chain)})

    async def on_state(self, request: web.Request) -> web.Response:
        state, chain = await self._state_at(request)
        events = await self._store.get_events([*state.values(), *chain])
        return json_response({
            "pdus": await served_pdus(self._store, [events[e].event for e in sorted(state.values()) if e in events]),
            "auth_chain": await served_pdus(self._store, [events[e].event for e in sorted(chain) if e in events]),
        })

    async def on_event_auth(self, request: web.Request) -> web.Response:
        event = await self._visible_event(
            request[ORIGIN], request.match_info["eventId"], request.match_info["roomId"]
        )
        chain = await self._store.get_auth_chain_ids([event.event_id])
        events = await self._store.get_events(chain)
        return json_response({
            "auth_chain": await served_pdus(self._store, [events[e].event for e in sorted(chain) if e in events])
        })

    async def on_get_missing_events(self, request: web.Request) -> web.Response:
        origin = request[ORIGIN]
        room_id = request.match_info["roomId"]
        body = request.get(BODY)
        if not isinstance(body, dict):
            raise bad_json("Body must be a JSON object")
        limit = body.get("limit", 10)
        min_depth = body.get("min_depth", 0)
        earliest = body.get("earliest_events", [])
        latest = body.get("latest_events")
        if not _is_int(limit) or not _is_int(min_depth):
            raise bad_json("limit and min_depth must be integers")
        if not _str_list(earliest) or not _str_list(latest) or not latest:
            raise bad_json("earliest_events and latest_events must be lists of event IDs")
        await self._require_room(origin, room_id)
        limit = max(0, min(limit, MAX_MISSING_EVENTS))
        # Walk prev_events back from latest_events, breadth first, stopping at
        # earliest_events, below min_depth, and at the limit. The latest are not returned.
        found = await self._walk_back(room_id, latest, set(earliest), limit, min_depth, include_start=False)
        found.sort(key=lambda e: (e.depth, e.event_id))
        return json_response({"events": await self._as_seen_by(origin, found)})

    async def on_backfill(self, request: web.Request) -> web.Response:
        origin = request[ORIGIN]
        room_id = request.match_info["roomId"]
        starts = request.query.getall("v", [])
        if not starts:
            raise MatrixError(400, "M_MISSING_PARAM", "v is required")
        try:
            limit = int(request.query.get("limit", "10"))
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
        await self._require_room(origin, room_id)
        limit = max(0, min(limit, MAX_BACKFILL))
        found = await self._walk_back(room_id, starts, set(), limit, 0, include_start=True)
        found.sort(key=lambda e: (-e.depth, e.event_id))
        envelope = self._envelope([])
        envelope["pdus"] = await self._as_seen_by(origin, found)
        return json_response(envelope)

    async def _walk_back(
        self, room_id: str, starts: list[str], stop: set[str], limit: int, min_depth: int,
        *, include_start: bool,
    ) -> list[Event]:
        found: list[Event] = []
        seen: set[str] = set(stop)
        frontier: list[str] = []
        if include_start:
            frontier = [s for s in starts if s not in seen]
        else:
            seen.update(starts)
            start_events = await self._store.get_events(starts)
            frontier = [p for s in start_events.values() if s.event.room_id == room_id
                        for p in s.event.prev_events]
        while frontier and len(found) < limit:
            batch = [e for e in dict.fromkeys(frontier) if e not in seen]
            seen.update(batch)
            stored = await self._store.get_events(batch)
            frontier = []
            for event_id in batch:
                s = stored.get(event_id)
                if s is None or s.event.room_id != room_id or s.outcome is Outcome.OUTLIER:
                    continue
                if s.event.depth < min_depth:
                    continue
                found.append(s.event)
                if len(found) >= limit:
                    break
                frontier.extend(s.event.prev_events)
        return found


def _redacted(event: Event) -> dict[str, Any]:
    """The event redacted (what a server that may not see it gets): its signatures still
    verify, and its content hash tells the receiver it was redacted."""
    return redact(event.pdu, event.room_version)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _strict_exempt(pdu: Mapping[str, Any]) -> bool:
    """In strict mode, member joins and invites by other servers' users still pass."""
    content = pdu.get("content")
    return (
        pdu.get("type") == "m.room.member"
        and isinstance(content, dict)
        and content.get("membership") in ("join", "invite")
    )
