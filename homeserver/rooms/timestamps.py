"""``timestamp_to_event``: the room's event closest to a time, in one direction.

The local answer is the closest event of our timeline (``storage/timestamps.py``). It is
conclusive unless it sits next to a gap in what we hold (one of its prev events is
missing, or nothing we hold follows it although it is not one of the room's latest
events), or there is none: then, as Synapse does, the other servers of the room are asked
(``GET /_matrix/federation/v1/timestamp_to_event``, through the one remote fetcher: each
bounded by a shared time budget and a small byte bound, peers backing off skipped). A
remote answer is used only when it is on the asked side of the time and closer than the
local one, and only once the event itself was fetched with ``/event`` and passed the
checks on receipt and the auth rules against its own auth events (it is stored as an
outlier); otherwise the next server is asked, and the local answer stands.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from homeserver.rooms.errors import RoomError
from homeserver.rooms.fetcher import Budget, RemoteFetcher
from homeserver.storage.events import EventStore, Outcome
from homeserver.storage.timestamps import TimestampStore

log = logging.getLogger(__name__)

FED = "/_matrix/federation/v1"
# Servers asked at most for one look-up, and the network time all of them may take.
MAX_SERVERS = 5
REMOTE_SECONDS = 10.0
# An answer is two short fields.
MAX_REPLY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Found:
    event_id: str
    origin_server_ts: int


class TimestampQueryError(RoomError):
    """A missing (M_MISSING_PARAM) or malformed (M_INVALID_PARAM) ``ts`` or ``dir``."""

    def __init__(self, errcode: str, reason: str) -> None:
        super().__init__(reason)
        self.errcode = errcode
        self.reason = reason


def parse_query(raw_ts: str | None, raw_dir: str | None) -> tuple[int, bool]:
    """``ts`` (milliseconds, an integer) and ``dir`` (``f``: forward, ``b``) of a
    ``timestamp_to_event`` request."""
    if raw_ts is None or raw_ts == "":
        raise TimestampQueryError("M_MISSING_PARAM", "ts is required")
    if raw_dir is None or raw_dir == "":
        raise TimestampQueryError("M_MISSING_PARAM", "dir is required")
    try:
        ts = int(raw_ts)
    except ValueError:
        raise TimestampQueryError("M_INVALID_PARAM", "ts must be an integer") from None
    if not -(2**63) <= ts < 2**63:
        raise TimestampQueryError("M_INVALID_PARAM", "ts is out of range")
    if raw_dir not in ("f", "b"):
        raise TimestampQueryError("M_INVALID_PARAM", "dir must be f or b")
    return ts, raw_dir == "f"


def _closer(ts: int, candidate: int, than: Found | None) -> bool:
    return than is None or abs(candidate - ts) < abs(than.origin_server_ts - ts)


class TimestampLookup:
    def __init__(
        self,
        store: EventStore,
        reads: TimestampStore,
        fetcher: RemoteFetcher | None = None,
        servers: Callable[[str], Awaitable[list[str]]] | None = None,
    ) -> None:
        self._store = store
        self._reads = reads
        self._fetcher = fetcher
        self._servers = servers

    async def local(self, room_id: str, ts: int, forward: bool) -> Found | None:
        found = await self._reads.closest(room_id, ts, forward)
        return None if found is None else Found(*found)

    async def conclusive(self, room_id: str, found: Found | None) -> bool:
        """Whether the local answer needs no other server: there is one, and no gap of
        what we hold is next to it."""
        if found is None:
            return False
        return not (
            await self._reads.next_to_backward_gap(found.event_id)
            or await self._reads.next_to_forward_gap(room_id, found.event_id)
        )

    async def find(self, room_id: str, ts: int, forward: bool, *, ask_others: bool = True) -> Found | None:
        """The closest event: local, or (when that is not conclusive and ``ask_others``)
        a closer one another server of the room knows."""
        found = await self.local(room_id, ts, forward)
        if not ask_others or self._fetcher is None or self._servers is None or await self.conclusive(room_id, found):
            return found
        budget = self._fetcher.budget(REMOTE_SECONDS)
        for server in (await self._servers(room_id))[:MAX_SERVERS]:
            if budget.left() <= 0:
                break
            remote = await self._ask(server, room_id, ts, forward, found, budget)
            if remote is not None:
                return remote
        return found

    async def _ask(
        self, server: str, room_id: str, ts: int, forward: bool, local: Found | None, budget: Budget
    ) -> Found | None:
        assert self._fetcher is not None
        reply = await self._fetcher.fetch_json(
            server, "timestamp_to_event", "GET", f"{FED}/timestamp_to_event/{quote(room_id, safe='')}", budget,
            query={"ts": str(ts), "dir": "f" if forward else "b"}, max_bytes=MAX_REPLY_BYTES,
        )
        if not isinstance(reply, dict):
            return None
        event_id, claimed = reply.get("event_id"), reply.get("origin_server_ts")
        if not isinstance(event_id, str) or not isinstance(claimed, int) or isinstance(claimed, bool):
            return None
        if local is not None and event_id == local.event_id:
            return local
        # What the event itself says, never what the answer claims.
        event_ts = await self._verified_ts(server, room_id, event_id, budget)
        if event_ts is None:
            return None
        on_side = event_ts >= ts if forward else event_ts <= ts
        if not on_side or not _closer(ts, event_ts, local):
            return None
        return Found(event_id, event_ts)

    async def _verified_ts(self, server: str, room_id: str, event_id: str, budget: Budget) -> int | None:
        """The event's origin_server_ts once we hold it (fetched, checked and stored as an
        outlier when we did not): None if it cannot be had or does not pass."""
        assert self._fetcher is not None
        stored = await self._store.get_event(event_id)
        if stored is None:
            version = await self._store.get_room_version(room_id)
            if version is None:
                return None
            await self._fetcher.fetch_outliers(server, room_id, version, [event_id], budget)
            stored = await self._store.get_event(event_id)
        if stored is None or stored.event.room_id != room_id or stored.outcome is Outcome.REJECTED:
            log.info("timestamp_to_event answer not usable", extra={"server": server, "event_id": event_id[:255]})
            return None
        return stored.event.origin_server_ts
