"""The Event: a PDU as received or built, with its event ID and room version attached.

Wire JSON stays in ``pdu`` untouched (signatures and hashes cover it); the fields the
auth rules and state resolution read are lifted out once, at construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.events.errors import EventFormatError
from homeserver.events.hashes import compute_event_id, room_id_for_create
from homeserver.events.versions import RoomVersion

StateKey = tuple[str, str]  # (event type, state_key)


def _event_ids(refs: Any, room_version: RoomVersion) -> tuple[str, ...]:
    """The event IDs of ``prev_events``/``auth_events``: the list itself, or in rooms 1
    and 2 the first element of each ``[event_id, {"sha256": ...}]`` pair."""
    if not refs:
        return ()
    if room_version.origin_event_ids:
        return tuple(ref[0] if isinstance(ref, (list, tuple)) and ref else ref for ref in refs)
    return tuple(refs)


@dataclass(frozen=True, slots=True, eq=False)
class Event:
    event_id: str
    room_version: RoomVersion
    room_id: str
    type: str
    state_key: str | None
    sender: str
    content: Mapping[str, Any]
    prev_events: tuple[str, ...]
    auth_events: tuple[str, ...]
    depth: int
    origin_server_ts: int
    pdu: dict[str, Any] = field(repr=False)
    # Set when the content hash did not match and the event was redacted on receipt.
    redacted_on_receipt: bool = False

    @classmethod
    def from_pdu(
        cls, pdu: dict[str, Any], room_version: RoomVersion, *, event_id: str | None = None
    ) -> Event:
        """Build an Event from PDU JSON. The caller runs the format checks first
        (``homeserver.events.format.check_pdu_format``): this reads fields without validating.

        ``event_id`` is computed (``compute_event_id``: the reference hash, or in rooms 1
        and 2 the PDU's own ``event_id``) unless given (pass it only when it was computed
        before, for example when loading from storage). ``prev_events`` and
        ``auth_events`` are plain event ID tuples in every room version. A PDU whose fields
        cannot be read as an event (a non-object, a list that is not one, a depth that is
        not a number) raises EventFormatError.
        """
        if event_id is None:
            event_id = compute_event_id(pdu, room_version)
        elif not isinstance(pdu, dict):
            raise EventFormatError("a PDU must be a JSON object")
        try:
            return cls._read(pdu, room_version, event_id)
        except (TypeError, ValueError, OverflowError) as e:
            raise EventFormatError(f"the PDU cannot be read as an event: {e}") from None

    @classmethod
    def _read(cls, pdu: dict[str, Any], room_version: RoomVersion, event_id: str) -> Event:
        room_id = pdu.get("room_id")
        if (
            room_id is None
            and room_version.room_id_is_create_hash
            and pdu.get("type") == "m.room.create"
        ):
            room_id = room_id_for_create(pdu, room_version)
        content = pdu.get("content")
        return cls(
            event_id=event_id,
            room_version=room_version,
            room_id=str(room_id),
            type=str(pdu.get("type")),
            state_key=pdu.get("state_key") if isinstance(pdu.get("state_key"), str) else None,
            sender=str(pdu.get("sender")),
            content=content if isinstance(content, dict) else {},
            prev_events=_event_ids(pdu.get("prev_events"), room_version),
            auth_events=_event_ids(pdu.get("auth_events"), room_version),
            depth=int(pdu.get("depth") or 0),
            origin_server_ts=int(pdu.get("origin_server_ts") or 0),
            pdu=pdu,
        )

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def state_tuple(self) -> StateKey:
        """(type, state_key) of a state event. Only valid when ``is_state``."""
        assert self.state_key is not None
        return (self.type, self.state_key)

    @property
    def membership(self) -> str | None:
        value = self.content.get("membership")
        return value if isinstance(value, str) else None

    @property
    def redacts(self) -> str | None:
        """The event a redaction targets: in content from v11, top level before."""
        if self.room_version.redacts_in_content:
            value = self.content.get("redacts")
        else:
            value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None

    def sender_domain(self) -> str:
        return self.sender.split(":", 1)[1] if ":" in self.sender else ""

    def __repr__(self) -> str:
        return (
            f"<Event {self.event_id} {self.type} state_key={self.state_key!r}"
            f" sender={self.sender}>"
        )

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id
