"""What rooms/ and client_api/ need of the outbound sender, as a protocol: they queue our
events and EDUs through it without importing federation/ (which depends on rooms/).
``homeserver.federation.sender.OutboundSender`` is the implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from homeserver.events.event import Event, StateKey
from homeserver.storage.database import Connection

# A member event, or just its content ({"membership": ...}).
MemberState = Event | Mapping[str, Any]


class Outbox(Protocol):
    def destinations_for_event(
        self,
        event: Event,
        state_before: Mapping[StateKey, MemberState],
        state_after: Mapping[StateKey, MemberState] | None,
    ) -> set[str]:
        """The servers our ``event`` goes to, given the room's members before and after it."""
        ...

    async def enqueue_event(self, conn: Connection, event: Event, destinations: Iterable[str]) -> None:
        """Queue our ``event`` for ``destinations`` in ``conn``'s transaction (refused, and
        counted, if another server created it); sent once that transaction commits."""
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
