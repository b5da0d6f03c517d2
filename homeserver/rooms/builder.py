"""Creating our own events: the one place a local user's event is built, checked and stored.

For each event, under the room's lock: prev_events are the room's forward extremities
(at most ``MAX_PREV_EVENTS``, the deepest), depth is one more than the deepest of them,
auth_events are picked by the spec's selection algorithm from the state before the
event, then the content hash and our signature are added. The event is checked against
the authorization rules with that state (refused with ``NotAllowed`` naming the rule),
persisted as accepted, and queued for its destinations by the outbound sender in the
same database transaction: an event is either stored and queued, or neither.

Rooms 1 and 2 (``RoomVersion.origin_event_ids``): we choose the event ID
(``$<random>:<our server>``, carried in the PDU) and cite prev/auth events as
``[event_id, {"sha256": reference hash}]`` pairs.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from homeserver.crypto.keys import ServerSigningKey
from homeserver.events.auth import auth_types_for_event, check_auth_rules
from homeserver.events.errors import AuthError, EventFormatError
from homeserver.events.event import Event, StateKey
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import event_reference
from homeserver.events.signing import sign_event
from homeserver.events.versions import RoomVersion
from homeserver.rooms.errors import BadRoomRequest, NotAllowed, RoomNotFound
from homeserver.rooms.outbox import Outbox
from homeserver.rooms.persist import EventPersister
from homeserver.storage.database import Connection
from homeserver.storage.events import EventStore, Outcome
from homeserver.util.clock import SYSTEM_CLOCK, Clock

MAX_PREV_EVENTS = 10
MAX_DEPTH = 2**63 - 1
CREATE: StateKey = ("m.room.create", "")
_OPAQUE_ALPHABET = string.ascii_letters
OPAQUE_ID_LENGTH = 18


def new_origin_event_id(server_name: str) -> str:
    """A fresh event ID for rooms 1 and 2: ``$`` + 18 random letters + ``:server_name``."""
    opaque = "".join(secrets.choice(_OPAQUE_ALPHABET) for _ in range(OPAQUE_ID_LENGTH))
    return f"${opaque}:{server_name}"




# Work done in the transaction that persists a local event (it gets the event).
AlsoInTransaction = Callable[[Connection, Event], Awaitable[None]]

class EventBuilder:
    def __init__(
        self,
        server_name: str,
        signing_key: ServerSigningKey,
        store: EventStore,
        persister: EventPersister,
        sender: Outbox,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self._key = signing_key
        self.store = store
        self.persister = persister
        self._sender = sender
        self._clock = clock

    @property
    def outbox(self) -> Outbox:
        """The outbound sender our events are queued with."""
        return self._sender

    # ------------------------------------------------------------------ public

    async def send(
        self, room_id: str, event_type: str, sender: str, content: Mapping[str, Any],
        state_key: str | None = None, *, also: AlsoInTransaction | None = None,
    ) -> Event:
        """Build, check, persist and queue one event (takes the room lock). ``also`` runs
        in the same database transaction (say, recording the client's txnId)."""
        async with self.persister.room_lock(room_id):
            return await self.send_locked(room_id, event_type, sender, content, state_key, also=also)

    async def send_locked(
        self, room_id: str, event_type: str, sender: str, content: Mapping[str, Any],
        state_key: str | None = None, *, also: AlsoInTransaction | None = None,
    ) -> Event:
        """As ``send``, for a caller already holding the room lock."""
        event, state_before = await self.build_locked(room_id, event_type, sender, content, state_key)
        await self.persist_local(event, state_before, also=also)
        return event

    async def build_locked(
        self, room_id: str, event_type: str, sender: str, content: Mapping[str, Any],
        state_key: str | None = None,
    ) -> tuple[Event, dict[StateKey, str]]:
        """Build, sign and auth-check the next event of the room; do not persist it."""
        template, version, state_before = await self.template_locked(
            room_id, event_type, sender, content, state_key
        )
        event = self.sign(template, version)
        await self.check_auth(event, state_before)
        return event, state_before

    async def template_locked(
        self, room_id: str, event_type: str, sender: str, content: Mapping[str, Any],
        state_key: str | None = None,
    ) -> tuple[dict[str, Any], RoomVersion, dict[StateKey, str]]:
        """An unsigned PDU for the next event of the room, its room version, and the state
        before it (``make_join``/``make_leave`` answer with such a template)."""
        version = await self.store.get_room_version(room_id)
        if version is None:
            raise RoomNotFound(room_id)
        prev_ids, depth, state_before = await self._prevs_and_state(room_id, version)
        pdu = self._draft(version, room_id, event_type, sender, content, state_key)
        wanted = auth_types_for_event(pdu, version)
        auth_ids = sorted(state_before[k] for k in wanted if k in state_before)
        pdu["auth_events"] = await self._references(room_id, auth_ids, version)
        pdu["prev_events"] = await self._references(room_id, prev_ids, version)
        pdu["depth"] = min(depth, MAX_DEPTH)
        return pdu, version, state_before

    async def create_event(self, version: RoomVersion, sender: str, room_id: str | None,
                           content: Mapping[str, Any]) -> Event:
        """Build, check and persist a room's create event (``room_id`` None in room v12)."""
        pdu = self._draft(version, room_id, "m.room.create", sender, content, "")
        pdu.update(prev_events=[], auth_events=[], depth=1)
        event = self.sign(pdu, version)
        await self.check_auth(event, {})
        await self.persist_local(event, {})
        return event

    def now_ms(self) -> int:
        return self._clock.time_ms()

    def sign(self, pdu: dict[str, Any], version: RoomVersion) -> Event:
        """Hash and sign a draft with our key; check its format (BadRoomRequest if not).
        Rooms 1 and 2: a draft without an ``event_id`` gets a new one of ours."""
        pdu = dict(pdu)
        if version.origin_event_ids and "event_id" not in pdu:
            pdu["event_id"] = new_origin_event_id(self.server_name)
        pdu["signatures"] = {}
        pdu.pop("hashes", None)
        signed = sign_event(pdu, version, self.server_name, self._key.signing_key)
        try:
            check_pdu_format(signed, version)
        except EventFormatError as e:
            raise BadRoomRequest(f"the event would be malformed: {e}") from None
        return Event.from_pdu(signed, version)

    async def check_auth(self, event: Event, state_before: Mapping[StateKey, str]) -> None:
        """The authorization rules against the state before the event (NotAllowed if not)."""
        auth_state = await self.auth_state(event, state_before)
        try:
            check_auth_rules(event, auth_state)
        except AuthError as e:
            raise NotAllowed(e.reason, e.rule) from None

    async def auth_state(self, event: Event, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        """The events of ``state`` the auth rules read for ``event`` (always with the create)."""
        if event.type == "m.room.create" and event.state_key == "":
            return {}
        wanted = auth_types_for_event(event) | {CREATE}
        ids = {k: state[k] for k in wanted if k in state}
        found = await self.store.get_events(ids.values())
        return {k: found[i].event for k, i in ids.items() if i in found}

    async def persist_local(
        self, event: Event, state_before: Mapping[StateKey, str], *, send: bool = True,
        also: AlsoInTransaction | None = None,
    ) -> int:
        """Persist ``event`` as accepted with ``state_before``; queue it for its
        destinations in the same transaction (and run ``also`` there). ``send=False``: our
        join made through another server's send_join, which that resident announces to
        the room. The caller holds the room lock."""
        dests: set[str] = set()
        if send:
            dests = await self.destinations(event, state_before)
        sender = self._sender

        async def hook(conn: Connection) -> None:
            if dests:
                await sender.enqueue_event(conn, event, dests)
            if also is not None:
                await also(conn, event)

        return await self.persister.persist_event(
            event, Outcome.ACCEPTED, state_before, in_transaction=hook if dests or also is not None else None
        )

    async def destinations(self, event: Event, state_before: Mapping[StateKey, str]) -> set[str]:
        """The servers ``event`` goes to, given the state before it (``Outbox.destinations_for_event``)."""
        before = await self.member_contents(event.room_id, state_before)
        after = dict(before)
        if event.type == "m.room.member" and event.state_key is not None:
            after[event.state_tuple] = {"membership": event.membership}
        return self._sender.destinations_for_event(event, before, after)

    async def member_contents(
        self, room_id: str, state: Mapping[StateKey, str]
    ) -> dict[StateKey, Mapping[str, Any]]:
        """``{("m.room.member", user): {"membership": m}}`` for the members of ``state``,
        read from the membership column (no event JSON is parsed)."""
        member_ids = {eid: k for k, eid in state.items() if k[0] == "m.room.member"}
        out: dict[StateKey, Mapping[str, Any]] = {}
        if not member_ids:
            return out
        for state_key, event_id, membership in await self.store.member_memberships(room_id):
            key = ("m.room.member", state_key)
            if member_ids.get(event_id) == key:
                out[key] = {"membership": membership}
        missing = [eid for eid, k in member_ids.items() if k not in out]
        for event_id, membership in (await self.store.memberships_of(missing)).items():
            out[member_ids[event_id]] = {"membership": membership}
        return out

    # ------------------------------------------------------------------ helpers

    async def _references(self, room_id: str, event_ids: Sequence[str], version: RoomVersion) -> list[Any]:
        """How a new event cites ``event_ids``: the IDs, or in rooms 1 and 2
        ``[event_id, {"sha256": ...}]`` pairs (each cited event is read for its hash)."""
        if not version.origin_event_ids:
            return list(event_ids)
        found = await self.store.get_events(event_ids)
        missing = [e for e in event_ids if e not in found]
        if missing:
            raise RoomNotFound(room_id, f"events to build on are missing: {missing[:3]}")
        return [event_reference(found[e].event.pdu, version) for e in event_ids]

    def _draft(
        self, version: RoomVersion, room_id: str | None, event_type: str, sender: str,
        content: Mapping[str, Any], state_key: str | None,
    ) -> dict[str, Any]:
        pdu: dict[str, Any] = {
            "type": event_type,
            "sender": sender,
            "content": dict(content),
            "origin_server_ts": self._clock.time_ms(),
        }
        if room_id is not None:
            pdu["room_id"] = room_id
        if state_key is not None:
            pdu["state_key"] = state_key
        if event_type == "m.room.redaction" and not version.redacts_in_content:
            redacts = content.get("redacts")
            if isinstance(redacts, str):
                pdu["redacts"] = redacts  # before room v11 the target is a top-level key
        return pdu

    async def _prevs_and_state(
        self, room_id: str, version: RoomVersion
    ) -> tuple[list[str], int, dict[StateKey, str]]:
        """prev_events (the deepest forward extremities, at most MAX_PREV_EVENTS), the
        depth of the next event, and the state before it."""
        extremities = await self.store.forward_extremity_depths(room_id)
        if not extremities:
            raise RoomNotFound(room_id, "we hold no events of this room to build on")
        # Only depths are read (a room with many forks parses no events for this).
        ranked = sorted(extremities, key=lambda ed: (-ed[1], ed[0]))
        chosen = ranked[:MAX_PREV_EVENTS]
        prev_ids = sorted(event_id for event_id, _ in chosen)
        depth = max(d for _, d in chosen) + 1
        if len(chosen) == len(extremities):
            # The current state is the resolution of the states after all extremities.
            state = await self.store.get_current_state_ids(room_id)
        else:
            # Resolved by state group: prevs that share a state (forks) count once.
            state = await self.persister.compute_state_before(version, prev_ids)
        return prev_ids, depth, state
