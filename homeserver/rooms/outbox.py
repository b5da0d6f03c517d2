"""What rooms/ and client_api/ need of the outbound sender, as a protocol: they queue our
events and EDUs through it without importing federation/ (which depends on rooms/).
``homeserver.federation.sender.OutboundSender`` is the implementation.

``Accepted`` says how an event offered to the sender came to be ours to send. It is passed
explicitly by the code that accepted the event, never derived from the event's content:
``LOCAL`` (the default) for the events our ``EventBuilder`` makes, ``HANDSHAKE`` for a
remote server's join, leave or knock that we accepted as the resident server through our
own ``send_join``/``send_leave``/``send_knock`` (``federation/rooms_api.py``, the only
module that may name it: ``tests/unit/test_handshake_acceptance.py`` checks the source).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from homeserver.events.event import Event, StateKey
from homeserver.storage.database import Connection

# A member event, or just its content ({"membership": ...}).
MemberState = Event | Mapping[str, Any]


class Accepted(enum.Enum):
    """How an event offered to the sender was accepted here (see the module docstring)."""

    LOCAL = "local"
    HANDSHAKE = "handshake"


class Outbox(Protocol):
    def destinations_for_event(
        self,
        event: Event,
        state_before: Mapping[StateKey, MemberState],
        state_after: Mapping[StateKey, MemberState] | None,
    ) -> set[str]:
        """The servers our ``event`` goes to, given the room's members before and after it."""
        ...

    async def enqueue_event(
        self, conn: Connection, event: Event, destinations: Iterable[str],
        accepted: Accepted = Accepted.LOCAL, *, handshake_origin: str | None = None,
    ) -> None:
        """Queue ``event`` for ``destinations`` in ``conn``'s transaction; sent once that
        transaction commits. ``LOCAL``: refused (and counted) unless one of our users sent
        it. ``HANDSHAKE``: a join, leave or knock of a user of ``handshake_origin`` (the
        server that made the send_* request) for themself, never sent to that server;
        anything else is refused and counted."""
        ...

    async def enqueue_edu(
        self,
        edu_type: str,
        content: Mapping[str, Any],
        destinations: Iterable[str],
        conn: Connection | None = None,
    ) -> bool:
        """Queue an EDU about our own users (False if refused); sent once committed."""
        ...
