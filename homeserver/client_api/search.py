"""``POST /_matrix/client/v3/search``: full-text search of ``room_events``.

- ``search_term`` matched as word prefixes (all words), in the ``keys`` asked
  (``content.body``, ``content.name``, ``content.topic``; all three by default);
- ``order_by``: ``rank`` (default) or ``recent``;
- ``filter``: ``rooms``/``not_rooms``, ``senders``/``not_senders``, ``types``/``not_types``
  (mapped onto the keys) and ``limit`` (default 10, at most 100);
- ``event_context`` (``before_limit``, ``after_limit``, ``include_profile``),
  ``groupings`` (``room_id``, ``sender``), ``include_state``, ``next_batch`` (query
  parameter), ``count`` (how many match, before visibility is applied) and ``highlights``
  (the words searched).

Only rooms the user is joined to are searched, and each result passes history visibility
(``rooms/visibility.py``: nothing from before their join where the room's history
visibility forbids it); redacted events are not found. The index is written at persist
time (storage/relations.py), the look-up is storage/search.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator, Requester
from homeserver.client_api.events import serialize_events
from homeserver.client_api.ignored import ignored_users
from homeserver.client_api.tokens import FIRST_POSITION, page_token
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError
from homeserver.events.relations import SEARCH_KEYS
from homeserver.http import json_response, read_json_object
from homeserver.rooms.redactions import applied_redactions
from homeserver.rooms.visibility import HistoryVisibility
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.events import EventStore, Outcome, StoredEvent
from homeserver.storage.search import Hit, SearchQuery, SearchStore, search_words
from homeserver.storage.timeline import TimelineStore
from homeserver.storage.users import UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
DEFAULT_CONTEXT = 5
MAX_CONTEXT = 20
MAX_TERM = 1000
MAX_STATE = 1000  # include_state: state events (other than members) per room


def _strings(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 1000:
        raise MatrixError(400, "M_BAD_JSON", f"{name} must be a list of strings")
    return list(value)


def _small_int(value: Any, name: str, default: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MatrixError(400, "M_BAD_JSON", f"{name} must be a non-negative integer")
    return min(value, high)


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MatrixError(400, "M_BAD_JSON", f"{name} must be an object")
    return value


def _parse_batch(raw: str | None) -> tuple[str, int] | None:
    if not raw:
        return None
    kind, _, number = raw.partition(":")
    # A rank offset or a stream ordering: ASCII digits (no sign), within a 63-bit integer
    # (PostgreSQL refuses a negative OFFSET; either engine, a number past 2^63).
    if (
        kind not in ("rank", "recent") or not (number.isascii() and number.isdigit())
        or len(number) > 19 or int(number) >= 2**63
    ):
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid next_batch")
    return kind, int(number)


class SearchAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, events: EventStore, timeline: TimelineStore,
        users: UserStore, visibility: HistoryVisibility, *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.auth = auth
        self.events = events
        self.timeline = timeline
        self.users = users
        self.visibility = visibility
        self.store = SearchStore(events.db)
        self.account_data = AccountDataStore(events.db)
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/_matrix/client/v3/search", self.search)]

    async def search(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        if "search_categories" not in body:
            raise MatrixError(400, "M_MISSING_PARAM", "search_categories is required")
        categories = _object(body.get("search_categories"), "search_categories")
        criteria = categories.get("room_events")
        if criteria is None:
            return json_response({"search_categories": {}})
        criteria = _object(criteria, "room_events")
        term = criteria.get("search_term")
        if not isinstance(term, str) or len(term) > MAX_TERM:
            raise MatrixError(400, "M_BAD_JSON", "search_term must be a string")
        keys = _strings(criteria.get("keys"), "keys") or list(SEARCH_KEYS)
        if any(k not in SEARCH_KEYS for k in keys):
            raise MatrixError(400, "M_BAD_JSON", f"keys must be among {', '.join(SEARCH_KEYS)}")
        order_by = criteria.get("order_by", "rank")
        if order_by not in ("rank", "recent"):
            raise MatrixError(400, "M_BAD_JSON", "order_by must be rank or recent")
        flt = _object(criteria.get("filter"), "filter")
        limit = _small_int(flt.get("limit"), "filter.limit", DEFAULT_LIMIT, MAX_LIMIT) or DEFAULT_LIMIT
        types, not_types = _strings(flt.get("types"), "filter.types"), _strings(flt.get("not_types"), "not_types")
        keys = [k for k in keys if (types is None or SEARCH_KEYS[k][0] in types)
                and SEARCH_KEYS[k][0] not in (not_types or [])]
        rooms = set(await self.events.joined_rooms(req.user_id))
        wanted_rooms = _strings(flt.get("rooms"), "filter.rooms")
        if wanted_rooms is not None:
            rooms &= set(wanted_rooms)
        rooms -= set(_strings(flt.get("not_rooms"), "filter.not_rooms") or [])
        groupings = _object(criteria.get("groupings"), "groupings")
        group_by: list[str] = []
        for g in groupings.get("group_by") or []:
            key = g.get("key") if isinstance(g, dict) else None
            if key not in ("room_id", "sender"):
                raise MatrixError(400, "M_BAD_JSON", "group_by keys must be room_id or sender")
            if key not in group_by:  # a key repeated (50,000 times) groups the page once
                group_by.append(str(key))
        batch = _parse_batch(request.query.get("next_batch"))
        if batch is not None and batch[0] != order_by:
            raise MatrixError(400, "M_INVALID_PARAM", "next_batch is from another ordering")

        words = search_words(term)
        query = SearchQuery(sorted(rooms), words, keys, _strings(flt.get("senders"), "filter.senders"),
                            _strings(flt.get("not_senders"), "filter.not_senders") or [])
        by_rank = order_by == "rank"
        offset = batch[1] if batch is not None and by_rank else 0
        before = batch[1] if batch is not None and not by_rank else None
        hits = await self.store.search(query, limit=limit, by_rank=by_rank, offset=offset, before=before)
        count = await self.store.count(query)
        results = await self._visible(req.user_id, hits)
        served = await serialize_events(self.users, self.events, req, [se for se, _ in results], clock=self.clock)
        context = _object(criteria.get("event_context"), "event_context")
        out_results: list[dict[str, Any]] = []
        ignored = await ignored_users(self.account_data, req.user_id) if context else frozenset()
        for (se, hit), event in zip(results, served, strict=True):
            item: dict[str, Any] = {"rank": hit.rank, "result": event}
            if context:
                item["context"] = await self._context(req, se, context, ignored)
            out_results.append(item)
        section: dict[str, Any] = {"results": out_results, "count": count, "highlights": words}
        if len(hits) == limit:
            section["next_batch"] = f"rank:{offset + limit}" if by_rank else f"recent:{hits[-1].stream_ordering}"
        if group_by:
            section["groups"] = _groups(group_by, [hit for _, hit in results], section.get("next_batch"))
        if criteria.get("include_state") is True:
            senders: dict[str, set[str]] = {}
            for _, hit in results:
                senders.setdefault(hit.room_id, {req.user_id})
                senders[hit.room_id].add(hit.sender)
            section["state"] = {room: await self._state(req, room, who) for room, who in senders.items()}
        return json_response({"search_categories": {"room_events": section}})

    async def _visible(self, user_id: str, hits: Sequence[Hit]) -> list[tuple[StoredEvent, Hit]]:
        """The hits the user may see, in order: accepted, not redacted, not sent by a user they
        ignore, visible to them."""
        found = await self.events.get_events(h.event_id for h in hits)
        stored = [found[h.event_id] for h in hits if h.event_id in found]
        redactions = await applied_redactions(self.events, (se.event for se in stored))
        ignored = await ignored_users(self.account_data, user_id)
        allowed: set[str] = set()
        by_room: dict[str, list[StoredEvent]] = {}
        for se in stored:
            event = se.event
            if se.outcome is Outcome.ACCEPTED and event.event_id not in redactions and event.sender not in ignored:
                by_room.setdefault(se.event.room_id, []).append(se)
        for room_id, events in by_room.items():
            allowed.update(se.event.event_id for se in await self.visibility.filter_for_user(user_id, room_id, events))
        return [(found[h.event_id], h) for h in hits if h.event_id in allowed]

    async def _context(
        self, req: Requester, se: StoredEvent, spec: dict[str, Any], ignored: frozenset[str],
    ) -> dict[str, Any]:
        before_limit = _small_int(spec.get("before_limit"), "before_limit", DEFAULT_CONTEXT, MAX_CONTEXT)
        after_limit = _small_int(spec.get("after_limit"), "after_limit", DEFAULT_CONTEXT, MAX_CONTEXT)
        room_id, position = se.event.room_id, se.stream_ordering
        before = await self.timeline.room_events(
            room_id, after=FIRST_POSITION, upto=position - 1, limit=before_limit, newest_first=True
        ) if before_limit else []
        upto = await self.events.max_stream_ordering()
        after = await self.timeline.room_events(
            room_id, after=position, upto=upto, limit=after_limit, newest_first=False
        ) if after_limit else []
        start = page_token((before[-1].stream_ordering if before else position) - 1)
        end = page_token(after[-1].stream_ordering if after else position)
        before = await self.visibility.filter_for_user(
            req.user_id, room_id, [e for e in before if e.event.sender not in ignored])
        after = await self.visibility.filter_for_user(
            req.user_id, room_id, [e for e in after if e.event.sender not in ignored])
        served = await serialize_events(self.users, self.events, req, [*before, *after], clock=self.clock)
        out: dict[str, Any] = {
            "start": start, "end": end,
            "events_before": served[: len(before)], "events_after": served[len(before):],
        }
        if spec.get("include_profile") is True:
            senders = {e.event.sender for e in (se, *before, *after)}
            state = await self.events.get_current_state_ids(room_id)
            members = await self.events.get_events(
                state[("m.room.member", s)] for s in senders if ("m.room.member", s) in state
            )
            profiles: dict[str, Any] = {}
            for member in members.values():
                content = member.event.content
                profiles[member.event.state_key or ""] = {
                    k: content[k] for k in ("displayname", "avatar_url") if isinstance(content.get(k), str)
                }
            out["profile_info"] = profiles
        return out

    async def _state(self, req: Requester, room_id: str, senders: set[str]) -> list[dict[str, Any]]:
        """The room's current state, with the member events of the results' senders (and
        the searcher) only
        (as lazy loading does) and at most ``MAX_STATE`` other events: the whole state of a
        hundred rooms of ten thousand members each was a response of a million events."""
        state = await self.events.get_current_state_ids(room_id)
        wanted = [eid for (t, sk), eid in sorted(state.items()) if t != "m.room.member"][:MAX_STATE]
        wanted += [state[("m.room.member", s)] for s in sorted(senders) if ("m.room.member", s) in state]
        found = await self.events.get_events(wanted)
        events = [se for se in found.values() if se.outcome is not Outcome.REJECTED]
        return await serialize_events(self.users, self.events, req, events, clock=self.clock)


def _groups(group_by: Sequence[str], hits: Sequence[Hit], next_batch: str | None) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for key in group_by:
        grouped: dict[str, dict[str, Any]] = {}
        for hit in hits:
            value = hit.room_id if key == "room_id" else hit.sender
            group = grouped.setdefault(value, {"results": [], "order": len(grouped) + 1})
            group["results"].append(hit.event_id)
        if next_batch is not None:
            for group in grouped.values():
                group["next_batch"] = next_batch
        groups[key] = grouped
    return groups
