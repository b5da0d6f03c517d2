"""Test helpers that build valid PDUs and small rooms for the event core's tests.

Signatures are dummies (auth does not check them); ``sign=True`` uses a real key instead.
"""

from __future__ import annotations

import itertools
from typing import Any

from nacl.signing import SigningKey

from homeserver.events.auth import auth_types_for_event
from homeserver.events.event import Event, StateKey
from homeserver.events.hashes import add_content_hash, room_id_for_create
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion

ALL_VERSIONS = [KNOWN_ROOM_VERSIONS[v] for v in ("10", "11", "12")]
EVERY_VERSION = list(KNOWN_ROOM_VERSIONS.values())  # 1 to 12
_ORIGIN_IDS = itertools.count(1)
DUMMY_REF_HASH = {"sha256": "aGFzaA"}
DUMMY_SIG = {"ed25519:dummy": "c2lnbmF0dXJl"}

ALICE = "@alice:a.test"  # the creator
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
DAVE = "@dave:b.test"


def make_pdu(
    version: RoomVersion,
    *,
    room_id: str | None,
    type: str,
    sender: str,
    content: dict[str, Any],
    state_key: str | None = None,
    prev_events: list[str] | None = None,
    auth_events: list[str] | None = None,
    depth: int = 1,
    ts: int = 1_700_000_000_000,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A PDU with every required key, a correct content hash and a dummy signature.
    Rooms 1 and 2: an ``event_id`` of the sender's server, and prev/auth events as
    ``[id, {"sha256": dummy}]`` pairs (IDs given as plain strings are paired)."""
    prevs: list[Any] = list(prev_events or [])
    auths: list[Any] = list(auth_events or [])
    if version.origin_event_ids:
        prevs = [p if isinstance(p, list) else [p, dict(DUMMY_REF_HASH)] for p in prevs]
        auths = [a if isinstance(a, list) else [a, dict(DUMMY_REF_HASH)] for a in auths]
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": content,
        "prev_events": prevs,
        "auth_events": auths,
        "depth": depth,
        "origin_server_ts": ts,
        "hashes": {},
        "signatures": {sender.split(":", 1)[1]: dict(DUMMY_SIG)},
    }
    if room_id is not None:
        pdu["room_id"] = room_id
    if version.origin_event_ids:
        pdu["event_id"] = f"$ev{next(_ORIGIN_IDS)}:{sender.split(':', 1)[1]}"
    if state_key is not None:
        pdu["state_key"] = state_key
    if extra:
        pdu.update(extra)
    return add_content_hash(pdu)


class Room:
    """A linear room: each event's prev_events is the previous event, auth_events are
    picked from the current state by the selection algorithm."""

    def __init__(
        self,
        version: RoomVersion,
        creator: str = ALICE,
        *,
        create_content: dict[str, Any] | None = None,
    ) -> None:
        self.version = version
        self.state: dict[StateKey, Event] = {}
        self.events: list[Event] = []
        self.by_id: dict[str, Event] = {}
        content: dict[str, Any] = {"room_version": version.identifier}
        if not version.create_uses_sender_as_creator:
            content["creator"] = creator
        content.update(create_content or {})
        room_id = None if version.room_id_is_create_hash else "!room:" + creator.split(":", 1)[1]
        pdu = make_pdu(version, room_id=room_id, type="m.room.create", sender=creator,
                       content=content, state_key="")
        self.room_id = room_id or room_id_for_create(pdu, version)
        self.create = self.add(Event.from_pdu(pdu, version))

    def make(
        self,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        **kwargs: Any,
    ) -> Event:
        """An event on top of the current room, not yet added to the state."""
        prev = [self.events[-1].event_id] if self.events else []
        draft = {"type": type, "sender": sender, "content": content, "state_key": state_key,
                 "room_id": self.room_id}
        if state_key is None:
            del draft["state_key"]
        wanted = auth_types_for_event(draft, self.version)
        auth = sorted(self.state[k].event_id for k in wanted if k in self.state)
        pdu = make_pdu(
            self.version,
            room_id=self.room_id,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            prev_events=kwargs.pop("prev_events", prev),
            auth_events=kwargs.pop("auth_events", auth),
            depth=len(self.events) + 1,
            **kwargs,
        )
        return Event.from_pdu(pdu, self.version)

    def add(self, event: Event) -> Event:
        self.events.append(event)
        self.by_id[event.event_id] = event
        if event.is_state:
            self.state[event.state_tuple] = event
        return event

    def send(self, type: str, sender: str, content: dict[str, Any],
             state_key: str | None = None, **kwargs: Any) -> Event:
        return self.add(self.make(type, sender, content, state_key, **kwargs))

    def member(self, user: str, membership: str, sender: str | None = None,
               **content: Any) -> Event:
        """Make (not add) a membership event for ``user``."""
        return self.make("m.room.member", sender or user, {"membership": membership, **content},
                         user)

    def set_member(self, user: str, membership: str, sender: str | None = None) -> Event:
        return self.add(self.member(user, membership, sender))


def standard_room(
    version: RoomVersion,
    *,
    join_rule: str = "public",
    users: dict[str, int] | None = None,
    power_levels: dict[str, Any] | None = None,
    create_content: dict[str, Any] | None = None,
) -> Room:
    """create, creator's join, power levels (creator at 100 before v12), join rules."""
    room = Room(version, create_content=create_content)
    room.set_member(ALICE, "join")
    pl_users = dict(users or {})
    if not version.creators_have_infinite_power:
        pl_users.setdefault(ALICE, 100)
    pl: dict[str, Any] = {"users": pl_users}
    pl.update(power_levels or {})
    room.send("m.room.power_levels", ALICE, pl, "")
    room.send("m.room.join_rules", ALICE, {"join_rule": join_rule}, "")
    return room


def signing_key(seed: bytes = b"k" * 32, version: str = "1") -> SigningKey:
    """A signedjson-compatible signing key (nacl key with ``alg`` and ``version``)."""
    key = SigningKey(seed)
    key.alg = "ed25519"
    key.version = version
    return key
