"""The per-PDU pipeline of the inbound worker, and the handling of EDUs.

Each PDU goes through the spec's "Checks performed on receipt of a PDU" in order:
1. format (else dropped), 2. signatures, keys through the key cache (else dropped),
3. content hash (else redacted), 4. auth against its auth events (else rejected),
5. auth against the state before it (else rejected), 6. auth against the current state
(else soft-failed). Rejected and soft-failed events are stored as such and never enter
the current state. Missing prev_events are fetched with a bounded ``get_missing_events``
(count, depth, time); when the gap remains the state at the missing event is fetched
(``/state_ids``, then ``/event/{id}`` for what we lack) instead of walking further.
Missing auth events come from ``/event_auth`` (or ``/event/{id}``), bounded. A peer whose
fetch failed is not asked again for ``fetch_backoff_seconds``: a dead peer costs at most
one budget, not one per event. An event already stored is skipped with one look-up.

EDUs: ``m.typing`` and ``m.receipt`` are written to their tables for the client API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from homeserver.config import InboundConfig
from homeserver.crypto.keyring import KeyNotFoundError, KeyRing
from homeserver.events.auth import (
    auth_types_for_event,
    check_auth_events_shape,
    check_auth_rules,
)
from homeserver.events.errors import AuthError, EventError, EventFormatError, SignatureError
from homeserver.events.event import Event, StateKey
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import compute_event_id
from homeserver.events.redaction import redact
from homeserver.events.signing import (
    HashCheck,
    check_content_hash,
    required_signers,
    verify_event_signatures,
)
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.federation.checkpool import CheckItem, CheckPool, Verdict
from homeserver.federation.inbox import InboxEntry
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.acl import AclChecker
from homeserver.rooms.persist import EventPersister, PersistError
from homeserver.rooms.store import RoomMembershipStore, ended_member
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, Outcome

log = logging.getLogger(__name__)

FED = "/_matrix/federation/v1"
TYPING_TIMEOUT_MS = 30_000
STATE_FETCH_CONCURRENCY = 8
MAX_STATE_EVENTS = 20_000
# Entries whose checks may run ahead at once (a bound on memory and on wasted work).
CHECK_AHEAD_LIMIT = 64
# A claimed batch with at least this many PDUs has steps 1-3 run in the check helpers,
# in chunks of POOL_CHUNK (smaller batches are checked inline: no process is worth it).
POOL_MIN_BATCH = 16
POOL_CHUNK = 25

CREATE: StateKey = ("m.room.create", "")


def _depth_of(pdu: Mapping[str, Any]) -> int:
    depth = pdu.get("depth")
    return depth if isinstance(depth, int) else 0


def auth_events_rejection(
    event: Event, found: Mapping[str, tuple[Event, Outcome]], create: Event | None
) -> str | None:
    """Step 4: why ``event`` fails against its own auth events (``found``: those we hold,
    with their outcomes), or None when it passes. ``create``: the room's create event when
    the event does not cite it (room v12)."""
    missing = [a for a in event.auth_events if a not in found]
    if missing:
        return f"auth events not found: {missing[:3]}"
    try:
        auth_events = [found[a][0] for a in event.auth_events]
        check_auth_events_shape(event, auth_events)
        for a in event.auth_events:
            if found[a][1] is Outcome.REJECTED:
                raise AuthError("2.3", f"auth event {a} was rejected")
        auth_state = {e.state_tuple: e for e in auth_events}
        if CREATE not in auth_state and create is not None:
            auth_state[CREATE] = create
        check_auth_rules(event, auth_state)
    except AuthError as e:
        return str(e)
    return None


class Dropped(Exception):
    """The PDU fails the format or signature checks, or cannot be placed: not stored."""


class Budget:
    """The time left for one bounded piece of network work (filling a gap, a backfill)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


class InboundProcessor:
    """Processes one inbox entry at a time per room (the worker guarantees the ordering)."""

    def __init__(
        self,
        config: InboundConfig,
        db: Database,
        store: EventStore,
        persister: EventPersister,
        keyring: KeyRing,
        client: FederationClient,
        metrics: Metrics,
        memberships: RoomMembershipStore,
        acl: AclChecker,
    ) -> None:
        self._config = config
        self._db = db
        self._store = store
        self._memberships = memberships
        self._acl = acl
        self._persister = persister
        self._keyring = keyring
        self._client = client
        self._metrics = metrics
        # event ID -> (event, outcome): auth events are read for every event of a room.
        self._events: OrderedDict[str, tuple[Event, Outcome]] = OrderedDict()
        self._backoff: dict[str, float] = {}
        # event ID -> state after it, for events this worker persisted (shared maps: a
        # message's state after is its state before, the same object).
        self._state_after: OrderedDict[str, Mapping[StateKey, str]] = OrderedDict()
        # Called with a room ID after typing or receipts of that room were stored (wakes
        # /sync long-polls). Listeners must be quick and must not raise.
        self.edu_listeners: list[Callable[[str], None]] = []
        # Called with (user ID, room ID) after a kick or ban ended a user's invite or knock
        # of a room we hold no state of (wakes the user's /sync long-polls). Same terms.
        self.membership_listeners: list[Callable[[str, str], None]] = []
        # event ID -> its steps 1-3 running ahead (see check_ahead).
        self._checked_ahead: dict[str, asyncio.Task[Event]] = {}
        # event ID -> outcome looked up for a whole claimed batch at once (None: not stored).
        self._prefetched: dict[str, Outcome | None] = {}
        # Steps 1-3 of large batches run in helper processes: event ID -> (its chunk's
        # verdicts, its index in the chunk).
        self._pool = CheckPool(config.check_processes)
        self._pooled: OrderedDict[str, tuple[asyncio.Task[list[Verdict]], int]] = OrderedDict()
        db.on_deferred_failure(self._forget_all)

    async def prefetch(self, entries: Sequence[InboxEntry]) -> None:
        """Look up, in one query, whether the claimed PDUs are already stored."""
        ids = [e.event_id for e in entries if e.kind == "pdu" and e.event_id]
        if not ids:
            return
        # Events whose writes are deferred are not seen: the cache of events knows them.
        found = await self._store.get_outcomes(ids, settled=False)
        for event_id in ids:
            self._prefetched[event_id] = found.get(event_id)
        while len(self._prefetched) > self._config.cache_size:
            self._prefetched.pop(next(iter(self._prefetched)))
        fresh = [e for e in entries if e.kind == "pdu" and e.event_id and e.room_version
                 and found.get(e.event_id) in (None, Outcome.OUTLIER) and e.event_id not in self._events]
        if self._pool.enabled and len(fresh) >= POOL_MIN_BATCH:
            for i in range(0, len(fresh), POOL_CHUNK):
                chunk = fresh[i : i + POOL_CHUNK]
                task = asyncio.create_task(self._pool_check(chunk))
                # Verdicts nobody collects (the entry turned out a duplicate) must not warn.
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                for n, entry in enumerate(chunk):
                    self._pooled[entry.event_id] = (task, n)  # type: ignore[index]
            while len(self._pooled) > self._config.cache_size:
                self._pooled.popitem(last=False)

    async def _pool_check(self, entries: Sequence[InboxEntry]) -> list[Verdict]:
        items: list[CheckItem] = []
        for n, entry in enumerate(entries):
            if n % 5 == 4:
                await asyncio.sleep(0)  # parsing a chunk at once would hold the loop
            keys = await self._signer_keys(entry.body)
            raw = {s: {k: bytes(v.encode()) for k, v in by_id.items()} for s, by_id in keys.items()}
            items.append((entry.raw, entry.room_version or "", raw))
        verdicts = await self._pool.check(items)
        self._metrics.inbound_helper_checks.inc(len(verdicts))
        return verdicts

    def close(self) -> None:
        """Stop the check helpers (the worker calls this when it stops)."""
        for task, _ in self._pooled.values():
            task.cancel()
        self._pooled.clear()
        self._pool.close()

    # ------------------------------------------------------------------ entry point

    async def __call__(self, entry: InboxEntry) -> asyncio.Future[None] | None:
        """Process one entry. A future returned resolves when what it stored is committed
        (the worker deletes the entry then); None: done already."""
        if entry.kind == "edu":
            await self.handle_edu(entry.origin, entry.body)
            return None
        assert entry.room_version is not None
        version = get_room_version(entry.room_version)
        commits: list[asyncio.Future[None]] = []
        try:
            if entry.room_id is not None and await self._store.get_room_version(entry.room_id) is None:
                outcome: str | None = await self._out_of_band(entry, version)
            else:
                outcome = await self.handle_pdu(entry.origin, entry.body, version, entry.event_id, commits=commits)
        except Dropped as e:
            self._metrics.events_processed.labels("dropped").inc()
            reason = str(e).split(":", 1)[0]
            self._metrics.inbound_pdus_dropped.labels(
                entry.origin, {"format": "malformed", "signature": "bad_signature"}.get(reason, "unplaceable")
            ).inc()
            log.info("inbound event dropped", extra={"origin": entry.origin, "event_id": entry.event_id,
                                                     "reason": str(e)})
            return None
        self._metrics.events_processed.labels(outcome or "duplicate").inc()
        return commits[0] if commits else None

    async def _out_of_band(self, entry: InboxEntry, version: RoomVersion) -> str | None:
        """An event of a room we hold no state of (the door admits only kicks and bans of
        our users who hold an invite to it or a knock on it): steps 1-3 (format, signatures,
        hashes), then the invite or knock is ended with it if the event cites it among its
        auth events and, for an invite, comes from the inviter (as Synapse asks of an
        invite's rescission). There is no state to authorize it against. The event is not
        stored as a room event. None: nothing stood to be ended (a repeat, or the user
        acted first)."""
        assert entry.event_id is not None and entry.room_id is not None
        event = await self._checked(entry.body, version, entry.event_id)
        target = ended_member(event.pdu)
        if target is None or event.membership is None:
            raise Dropped("unplaceable: an event of a room we are not in")
        pending = await self._memberships.pending(target, entry.room_id)
        if pending is None:
            return None
        # Without the room's state this cannot be authorized; what it must show instead:
        # it cites the invite or knock it ends among its auth events (the room's servers
        # know its ID; a stranger does not), and an invite is ended by its inviter only.
        if pending.event_id not in event.auth_events or (
            pending.membership == "invite" and event.sender != pending.sender
        ):
            raise Dropped("unplaceable: it does not end the invite or knock we hold")
        await self._memberships.end(pending, event.pdu, event.event_id, event.membership)
        log.info("remote invite or knock ended", extra={
            "origin": entry.origin, "event_id": event.event_id, "room_id": entry.room_id,
            "membership": event.membership})
        for listener in self.membership_listeners:
            listener(target, entry.room_id)
        return "out_of_band"

    def _forget_all(self) -> None:
        """Deferred writes failed: what the caches say was stored may not be."""
        self._events.clear()
        self._state_after.clear()
        self._prefetched.clear()

    async def handle_pdu(
        self, origin: str, pdu: dict[str, Any], version: RoomVersion, event_id: str | None = None,
        *, budget: Budget | None = None, commits: list[asyncio.Future[None]] | None = None,
    ) -> str | None:
        """Run the checks and persist; return the outcome's name, or None for a duplicate.
        With ``commits``, the write may be deferred: its commit's future is appended."""
        event_id = event_id or compute_event_id(pdu, version)
        if event_id in self._events:
            return None
        # An outlier (stored earlier as another event's auth or state) is processed now.
        if event_id in self._prefetched:
            stored = self._prefetched.pop(event_id)
        else:
            stored = (await self._store.get_outcomes([event_id])).get(event_id)
        if stored is not None and stored is not Outcome.OUTLIER:
            return None
        event = await self._checked(pdu, version, event_id)
        return await self._process(origin, event, budget, stored, commits)

    async def _checked(self, pdu: dict[str, Any], version: RoomVersion, event_id: str) -> Event:
        """Steps 1-3: their verdict from the helpers or from a check run ahead, else run now."""
        pooled = self._pooled.pop(event_id, None)
        ahead = self._checked_ahead.pop(event_id, None)
        if pooled is not None:
            if ahead is not None:
                ahead.cancel()
            return await self._pooled_event(pooled, pdu, version, event_id)
        return await (ahead if ahead is not None else self.check_event(pdu, version, event_id))

    async def _pooled_event(
        self, pooled: tuple[asyncio.Task[list[Verdict]], int], pdu: dict[str, Any], version: RoomVersion,
        event_id: str,
    ) -> Event:
        task, index = pooled
        try:
            verdict, detail = (await task)[index]
        except asyncio.CancelledError:
            if task.cancelled():  # the chunk was given up (shutdown), not this task
                return await self.check_event(pdu, version, event_id)
            raise
        except Exception:
            log.warning("check helpers failed; checking inline", exc_info=True)
            return await self.check_event(pdu, version, event_id)
        if verdict in ("format", "signature"):
            raise Dropped(f"{verdict}: {detail}")
        if verdict == "redact":
            return dataclasses.replace(
                Event.from_pdu(redact(pdu, version), version, event_id=event_id), redacted_on_receipt=True
            )
        return Event.from_pdu(pdu, version, event_id=event_id)

    def check_ahead(self, entry: InboxEntry) -> None:
        """Start steps 1-3 (format, signatures, hashes: they need no room state) of the
        room's next entry, so they run while this entry waits on the database."""
        if entry.kind != "pdu" or not entry.event_id or entry.room_version is None:
            return
        if entry.event_id in self._checked_ahead or entry.event_id in self._events or entry.event_id in self._pooled:
            return
        version = get_room_version(entry.room_version)
        task = asyncio.create_task(self.check_event(entry.body, version, entry.event_id))
        # A check that nobody collects (the entry turned out a duplicate) must not warn.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._checked_ahead[entry.event_id] = task
        while len(self._checked_ahead) > CHECK_AHEAD_LIMIT:
            stale = self._checked_ahead.pop(next(iter(self._checked_ahead)))
            stale.cancel()

    # ------------------------------------------------------------------ steps 1-3

    async def check_event(self, pdu: dict[str, Any], version: RoomVersion, event_id: str) -> Event:
        # 1. Format, else dropped.
        try:
            check_pdu_format(pdu, version)
        except EventFormatError as e:
            raise Dropped(f"format: {e}") from None
        # 2. Signatures of every required signer, else dropped.
        keys = await self._signer_keys(pdu)
        try:
            verify_event_signatures(pdu, version, keys)
        except SignatureError as e:
            raise Dropped(f"signature: {e}") from None
        # 3. Content hash, else the event is used redacted.
        check, used = check_content_hash(pdu, version)
        event = Event.from_pdu(used, version, event_id=event_id)
        if check is HashCheck.MISMATCH:
            event = dataclasses.replace(event, redacted_on_receipt=True)
        return event

    async def _signer_keys(self, pdu: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The verify keys, valid when the event was sent, of every required signer's
        ed25519 signatures (keys that cannot be had are left out: the check then fails)."""
        keys: dict[str, dict[str, Any]] = {}
        sigs = pdu.get("signatures")
        ts = pdu.get("origin_server_ts")
        if not isinstance(sigs, dict) or not isinstance(ts, int):
            return keys
        for server in required_signers(pdu):
            by_id = sigs.get(server)
            if not isinstance(by_id, dict):
                continue
            for key_id in by_id:
                if not key_id.startswith("ed25519:"):
                    continue
                try:
                    key = await self._keyring.get_verify_key(server, key_id, valid_at_ms=ts)
                except KeyNotFoundError:
                    continue
                keys.setdefault(server, {})[key_id] = key
        return keys

    # ------------------------------------------------------------------ steps 4-6

    async def _process(
        self, origin: str, event: Event, budget: Budget | None, stored: Outcome | None = None,
        commits: list[asyncio.Future[None]] | None = None,
    ) -> str:
        # Network work first, without the room lock: missing auth events, missing prevs.
        await self._ensure_auth_events(origin, event)
        prev_states = await self._prev_states(origin, event, budget)
        async with self._persister.room_lock(event.room_id):
            generation = self._persister.generation
            outcome, reason, state_before = await self._decide(event, prev_states)
            _, commit = await self._persister.persist_event_deferred(
                event, outcome, state_before, rejection_reason=reason, stored_outcome=stored,
                defer=commits is not None, generation=generation,
            )
        if commit is not None and commits is not None:
            commits.append(commit)
        self._remember(event, outcome)
        after: Mapping[StateKey, str] = state_before
        if event.is_state and outcome is not Outcome.REJECTED:
            after = {**state_before, event.state_tuple: event.event_id}
        self._state_after[event.event_id] = after
        while len(self._state_after) > self._config.cache_size:
            self._state_after.popitem(last=False)
        if outcome is not Outcome.ACCEPTED:
            log.info("inbound event not accepted", extra={
                "origin": origin, "event_id": event.event_id, "outcome": outcome.value, "reason": reason})
        return outcome.value

    async def _decide(
        self, event: Event, prev_states: list[Mapping[StateKey, str]] | None
    ) -> tuple[Outcome, str | None, dict[StateKey, str]]:
        version = event.room_version
        if event.type == "m.room.create" and event.state_key == "":
            try:
                check_auth_rules(event, {})
            except AuthError as e:
                return Outcome.REJECTED, str(e), {}
            return Outcome.ACCEPTED, None, {}
        # The state before the event: from its prevs' stored states, or the fetched ones.
        try:
            cached = [self._state_after.get(p) for p in event.prev_events]
            if prev_states is None and len(cached) == 1 and cached[0] is not None:
                state_before = dict(cached[0])  # the linear case: no look-up
            elif prev_states is None:
                state_before = await self._persister.compute_state_before(version, event.prev_events)
            else:
                state_before = await self._persister.resolve(version, prev_states)
        except PersistError as e:
            raise Dropped(f"no state before the event: {e}") from None
        # 4. Auth against the event's own auth events, else rejected.
        auth = await self._get_events(event.auth_events)
        create: dict[StateKey, Event] = {}
        if event.room_version.room_id_is_create_hash:
            await self._add_create(event, create)
        reason = auth_events_rejection(event, auth, create.get(CREATE))
        if reason is not None:
            return Outcome.REJECTED, reason, state_before
        # 5. Auth against the state before the event, else rejected.
        try:
            check_auth_rules(event, await self._auth_state(event, state_before))
        except AuthError as e:
            return Outcome.REJECTED, str(e), state_before
        # 6. Auth against the current state, else soft-failed. When the event's prevs are
        # the room's forward extremities, the current state is the state before it.
        extremities = await self._persister.forward_extremities(event.room_id)
        if extremities != set(event.prev_events):
            current = await self._store.get_current_state_ids(event.room_id)
            if current != state_before:
                # The spec's current state is "the resolved state across all forward
                # extremities"; once this event is accepted its branch is one of them (as
                # in Synapse). A sender whose join reached us only as this event's prev
                # (say, through the state fetched for a gap) is joined there; a banned
                # sender citing old events stays banned (state resolution orders the ban
                # after the join it follows).
                try:
                    current = await self._persister.resolve(version, [current, state_before])
                except PersistError:
                    pass
            try:
                check_auth_rules(event, await self._auth_state(event, current))
            except AuthError as e:
                return Outcome.SOFT_FAILED, str(e), state_before
        return Outcome.ACCEPTED, None, state_before

    async def _auth_state(self, event: Event, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        wanted = auth_types_for_event(event) | {CREATE}
        ids = {k: state[k] for k in wanted if k in state}
        found = await self._get_events(ids.values())
        return {k: found[i][0] for k, i in ids.items() if i in found}

    async def _add_create(self, event: Event, auth_state: dict[StateKey, Event]) -> None:
        """Room v12 events do not cite the create event: its ID is the room ID."""
        if CREATE in auth_state or not event.room_version.room_id_is_create_hash:
            return
        found = await self._get_events(["$" + event.room_id[1:]])
        for ev, _ in found.values():
            auth_state[CREATE] = ev

    # ------------------------------------------------------------------ event cache

    def _remember(self, event: Event, outcome: Outcome) -> None:
        self._events[event.event_id] = (event, outcome)
        self._events.move_to_end(event.event_id)
        while len(self._events) > self._config.cache_size:
            self._events.popitem(last=False)

    async def _get_events(self, event_ids: Iterable[str]) -> dict[str, tuple[Event, Outcome]]:
        out: dict[str, tuple[Event, Outcome]] = {}
        wanted: list[str] = []
        for event_id in event_ids:
            hit = self._events.get(event_id)
            if hit is not None:
                out[event_id] = hit
            else:
                wanted.append(event_id)
        if wanted:
            for event_id, stored in (await self._store.get_events(wanted)).items():
                out[event_id] = (stored.event, stored.outcome)
                if stored.outcome is not Outcome.OUTLIER:
                    self._remember(stored.event, stored.outcome)
        return out

    # ------------------------------------------------------------------ fetching

    def _backing_off(self, server: str) -> bool:
        until = self._backoff.get(server)
        return until is not None and until > time.monotonic()

    def _failed(self, server: str, kind: str, error: Exception) -> None:
        status = getattr(error, "status", None)
        if status is None or status >= 500 or status == 429:
            # The peer is down, slow or overloaded: ask it nothing for a while, so it costs
            # one budget, not one per event. A 4xx answer (say, a 403 for an event it will
            # not show us) is an answer from a healthy peer, and says nothing of others.
            self._backoff[server] = time.monotonic() + self._config.fetch_backoff_seconds
        self._metrics.missing_events_fetches.labels(kind, "failed").inc()
        log.info("fetch from a peer failed", extra={"server": server, "kind": kind, "error": str(error)})

    async def _fetch_json(self, server: str, kind: str, method: str, path: str, budget: Budget,
                          **kw: Any) -> Any | None:
        if self._backing_off(server) or budget.left() <= 0:
            return None
        try:
            async with asyncio.timeout(budget.left()):
                reply = await self._client.request(method, server, path, timeout=budget.left(), **kw)
        except (FederationRequestError, TimeoutError) as e:
            self._failed(server, kind, e)
            return None
        self._metrics.missing_events_fetches.labels(kind, "ok").inc()
        return reply

    async def _ensure_auth_events(self, origin: str, event: Event) -> None:
        """Fetch the auth events we lack (``/event_auth``, then ``/event/{id}``), bounded;
        check them and store them as outliers. What cannot be had leaves the event to be
        rejected at step 4."""
        if not event.auth_events:
            return
        have = await self._get_events(event.auth_events)
        missing = [a for a in event.auth_events if a not in have]
        if not missing:
            return
        budget = Budget(self._config.missing_events_timeout)
        room = quote(event.room_id, safe="")
        reply = await self._fetch_json(
            origin, "event_auth", "GET", f"{FED}/event_auth/{room}/{quote(event.event_id, safe='')}", budget
        )
        pdus: list[Any] = []
        if isinstance(reply, dict) and isinstance(reply.get("auth_chain"), list):
            pdus = reply["auth_chain"][: self._config.missing_auth_events_limit]
        else:
            pdus = await self._fetch_events(origin, missing[: self._config.missing_auth_events_limit], budget)
        await self._store_outliers(pdus, event.room_version, event.room_id)

    async def _fetch_events(self, origin: str, event_ids: Sequence[str], budget: Budget) -> list[Any]:
        sem = asyncio.Semaphore(STATE_FETCH_CONCURRENCY)

        async def one(event_id: str) -> Any:
            async with sem:
                reply = await self._fetch_json(origin, "event", "GET", f"{FED}/event/{quote(event_id, safe='')}",
                                               budget)
            if isinstance(reply, dict) and isinstance(reply.get("pdus"), list) and reply["pdus"]:
                return reply["pdus"][0]
            return None

        got = await asyncio.gather(*(one(e) for e in event_ids))
        return [p for p in got if isinstance(p, dict)]

    async def _store_outliers(self, pdus: Sequence[Any], version: RoomVersion, room_id: str) -> set[str]:
        """Check fetched events (format, signatures, hashes, auth against their own auth
        events, in depth order) and store those that pass as outliers."""
        checked: dict[str, Event] = {}
        for pdu in sorted((p for p in pdus if isinstance(p, dict)),
                          key=_depth_of):
            if pdu.get("room_id", room_id) != room_id:
                continue
            try:
                event_id = compute_event_id(pdu, version)
                if event_id in checked:
                    continue
                event = await self.check_event(pdu, version, event_id)
            except (Dropped, EventError, TypeError, ValueError, AttributeError):
                continue
            checked[event.event_id] = event
        have = await self._store.have_events(checked)
        lookup: dict[str, Event] = {eid: e for eid, (e, _) in (await self._get_events(
            {a for e in checked.values() for a in e.auth_events})).items()}
        good: list[Event] = []
        for event in checked.values():
            if event.event_id in have:
                continue
            lookup_state: dict[StateKey, Event] = {}
            for a in event.auth_events:
                auth_event = lookup.get(a)
                if auth_event is not None and auth_event.is_state:
                    lookup_state[auth_event.state_tuple] = auth_event
            try:
                if event.type != "m.room.create":
                    await self._add_create(event, lookup_state)
                    if CREATE not in lookup_state and "$" + event.room_id[1:] in checked:
                        lookup_state[CREATE] = checked["$" + event.room_id[1:]]
                check_auth_rules(event, lookup_state)
            except AuthError:
                continue
            good.append(event)
            lookup[event.event_id] = event
        await self._persister.persist_outliers(good)
        self._metrics.inbound_fetched_events.inc(len([e for e in good if e.event_id not in have]))
        return {e.event_id for e in good} | have

    async def _prev_states(
        self, origin: str, event: Event, budget: Budget | None
    ) -> list[Mapping[StateKey, str]] | None:
        """None when every prev event is stored with state; otherwise fill the gap and
        return the states after the prev events (fetched where still missing)."""
        if not event.prev_events:
            return None
        if all(p in self._state_after for p in event.prev_events):
            return None
        outcomes = await self._store.get_outcomes(event.prev_events)
        missing = [p for p in event.prev_events if outcomes.get(p) in (None, Outcome.OUTLIER)]
        if not missing:
            return None
        started = time.perf_counter()
        try:
            gap_filling = budget is None
            budget = budget or Budget(self._config.missing_events_timeout)
            if gap_filling:
                await self._get_missing_events(origin, event, budget)
                outcomes = await self._store.get_outcomes(event.prev_events)
                missing = [p for p in event.prev_events if outcomes.get(p) in (None, Outcome.OUTLIER)]
                if not missing:
                    return None
            # The gap remains: fetch the state at each missing prev instead of walking on.
            states: list[Mapping[StateKey, str]] = []
            for prev in event.prev_events:
                if prev in missing:
                    state = await self._state_after_remote(origin, event, prev, budget)
                    if state is None:
                        raise Dropped(f"prev event {prev} and the state at it could not be fetched")
                else:
                    state = await self._store.get_state_ids_after(prev)
                    if state is None:
                        raise Dropped(f"prev event {prev} has no state")
                states.append(state)
            return states
        finally:
            self._metrics.missing_events_seconds.observe(time.perf_counter() - started)

    async def _get_missing_events(self, origin: str, event: Event, budget: Budget) -> None:
        earliest = await self._store.get_forward_extremities(event.room_id)
        reply = await self._fetch_json(
            origin, "get_missing_events", "POST",
            f"{FED}/get_missing_events/{quote(event.room_id, safe='')}", budget,
            content={
                "limit": self._config.missing_events_limit,
                "min_depth": max(0, event.depth - self._config.missing_events_max_depth),
                "earliest_events": earliest,
                "latest_events": [event.event_id],
            },
        )
        if not isinstance(reply, dict) or not isinstance(reply.get("events"), list):
            return
        fetched = [p for p in reply["events"][: self._config.missing_events_limit] if isinstance(p, dict)]
        fetched.sort(key=_depth_of)
        for pdu in fetched:
            if pdu.get("room_id") != event.room_id:
                continue
            try:
                # No further get_missing_events: what these lack is fetched as state.
                if await self.handle_pdu(origin, pdu, event.room_version, budget=budget) is not None:
                    self._metrics.inbound_fetched_events.inc()
            except Dropped as e:
                log.info("fetched missing event dropped", extra={"origin": origin, "reason": str(e)})
            except (EventError, TypeError, ValueError, AttributeError):
                continue

    async def _state_after_remote(
        self, origin: str, event: Event, prev: str, budget: Budget
    ) -> dict[StateKey, str] | None:
        """The state after ``prev`` from ``/state_ids`` at it, fetching what we lack."""
        room = quote(event.room_id, safe="")
        reply = await self._fetch_json(origin, "state_ids", "GET", f"{FED}/state_ids/{room}", budget,
                                       query={"event_id": prev})
        if not isinstance(reply, dict):
            return None
        pdu_ids, chain_ids = reply.get("pdu_ids"), reply.get("auth_chain_ids")
        if not isinstance(pdu_ids, list) or not isinstance(chain_ids, list):
            return None
        wanted = [i for i in dict.fromkeys([*chain_ids, *pdu_ids, prev]) if isinstance(i, str)]
        if len(wanted) > MAX_STATE_EVENTS:
            return None
        have = await self._store.have_events(wanted)
        lacking = [i for i in wanted if i not in have]
        if lacking:
            await self._store_outliers(await self._fetch_events(origin, lacking, budget),
                                       event.room_version, event.room_id)
        found = await self._get_events([*pdu_ids, prev])
        state: dict[StateKey, str] = {}
        for event_id in pdu_ids:
            hit = found.get(event_id)
            if hit is None or not hit[0].is_state:
                return None  # the state is incomplete: the event cannot be placed
            state[hit[0].state_tuple] = event_id
        prev_hit = found.get(prev)
        if prev_hit is None:
            return None
        if prev_hit[0].is_state:
            state[prev_hit[0].state_tuple] = prev
        return state

    # ------------------------------------------------------------------ EDUs

    async def handle_edu(self, origin: str, edu: Mapping[str, Any]) -> None:
        """m.typing and m.receipt go to their tables (the door kept only the origin's own
        users), except those of rooms whose server ACL denies the origin; anything else is
        ignored."""
        content = edu.get("content")
        if not isinstance(content, dict):
            return
        now = int(time.time() * 1000)
        if edu.get("edu_type") == "m.typing":
            room_id, user_id = content.get("room_id"), content.get("user_id")
            if not isinstance(room_id, str) or not isinstance(user_id, str):
                return
            if not await self._acl.allows(origin, room_id):
                self._metrics.inbound_edus_dropped.labels(origin, "acl").inc()
                return
            if content.get("typing") is True:
                await self._db.execute(
                    "INSERT INTO typing (room_id, user_id, expires_ts) VALUES (?, ?, ?)"
                    " ON CONFLICT (room_id, user_id) DO UPDATE SET expires_ts = excluded.expires_ts",
                    room_id, user_id, now + TYPING_TIMEOUT_MS,
                )
            else:
                # Expired now rather than deleted: /sync reports "stopped typing" as a change.
                await self._db.execute(
                    "UPDATE typing SET expires_ts = ? WHERE room_id = ? AND user_id = ? AND expires_ts > ?",
                    now, room_id, user_id, now,
                )
            self._edu_stored([room_id])
        elif edu.get("edu_type") == "m.receipt":
            rows: list[tuple[Any, ...]] = []
            for room_id, by_type in content.items():
                if not await self._acl.allows(origin, room_id):
                    self._metrics.inbound_edus_dropped.labels(origin, "acl").inc()
                    continue
                for receipt_type, by_user in by_type.items():
                    for user_id, receipt in by_user.items():
                        event_ids = receipt.get("event_ids")
                        data = receipt.get("data")
                        if not isinstance(event_ids, list) or not all(isinstance(e, str) for e in event_ids):
                            continue
                        data = data if isinstance(data, dict) else {}
                        thread = data.get("thread_id")
                        rows.append((room_id, receipt_type, user_id,
                                     thread if isinstance(thread, str) else "",
                                     json.dumps(event_ids), json.dumps(data), now))
            if rows:
                await self._db.executemany(
                    "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_ids, data,"
                    " received_ts) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (room_id, receipt_type,"
                    " user_id, thread_id) DO UPDATE SET event_ids = excluded.event_ids,"
                    " data = excluded.data, received_ts = excluded.received_ts",
                    rows,
                )
                self._edu_stored(dict.fromkeys(r[0] for r in rows))

    def _edu_stored(self, room_ids: Iterable[str]) -> None:
        for room_id in room_ids:
            for listener in self.edu_listeners:
                try:
                    listener(room_id)
                except Exception:
                    log.exception("EDU listener failed", extra={"room_id": room_id})
