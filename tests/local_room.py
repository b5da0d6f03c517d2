"""A room of ours built event by event in tests, until the room code exists: our events
are signed with our server's key and persisted through the EventPersister, queued for
outbound in the same transaction (``in_transaction``); remote members' joins are persisted
as received events (never queued)."""

from __future__ import annotations

from typing import Any

from homeserver.app import Services
from homeserver.events.auth import auth_types_for_event
from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import server_name_of
from homeserver.events.signing import sign_event
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.federation.destinations import destinations_for_event
from homeserver.storage.database import Connection
from homeserver.storage.events import Outcome
from tests.unit.events.builders import make_pdu


class LocalRoom:
    def __init__(self, services: Services, version: RoomVersion | None = None, local: str = "alice") -> None:
        self.services = services
        self.version = version or get_room_version("10")
        self.server_name = services.config.server_name
        self.creator = f"@{local}:{self.server_name}"
        self.room_id = f"!r{id(self)}:{self.server_name}"
        self.state: dict[StateKey, Event] = {}
        self.last: list[str] = []
        self.depth = 0
        self.sent: list[tuple[Event, set[str]]] = []

    async def create(self, join_rule: str = "public") -> LocalRoom:
        await self.send("m.room.create", self.creator, {"room_version": self.version.identifier,
                                                          "creator": self.creator}, "")
        await self.send("m.room.member", self.creator, {"membership": "join"}, self.creator)
        await self.send("m.room.power_levels", self.creator, {"users": {self.creator: 100}}, "")
        await self.send("m.room.join_rules", self.creator, {"join_rule": join_rule}, "")
        return self

    def build(self, type: str, sender: str, content: dict[str, Any], state_key: str | None = None) -> Event:
        draft: dict[str, Any] = {"type": type, "sender": sender, "content": content, "room_id": self.room_id}
        if state_key is not None:
            draft["state_key"] = state_key
        wanted = auth_types_for_event(draft, self.version)
        auth = sorted(self.state[k].event_id for k in wanted if k in self.state)
        self.depth += 1
        pdu = make_pdu(self.version, room_id=self.room_id, type=type, sender=sender, content=content,
                       state_key=state_key, prev_events=list(self.last), auth_events=auth, depth=self.depth)
        if server_name_of(sender) == self.server_name:
            pdu["signatures"] = {}
            pdu = sign_event(pdu, self.version, self.server_name, self.services.signing_key.signing_key)
        return Event.from_pdu(pdu, self.version)

    async def send(
        self, type: str, sender: str, content: dict[str, Any], state_key: str | None = None,
        *, enqueue: bool | None = None,
    ) -> Event:
        """Persist the next event; queue it for its destinations when it is ours (or when
        ``enqueue`` forces the attempt, to test the sender's refusal)."""
        event = self.build(type, sender, content, state_key)
        return await self.persist(event, enqueue=enqueue)

    async def persist(self, event: Event, *, enqueue: bool | None = None) -> Event:
        before_ids = {k: e.event_id for k, e in self.state.items()}
        after = dict(self.state)
        if event.is_state:
            after[event.state_tuple] = event
        dests = destinations_for_event(event, self.state, after, server_name=self.server_name)
        if enqueue is None:
            enqueue = server_name_of(event.sender) == self.server_name
        sender = self.services.sender

        async def hook(conn: Connection) -> None:
            await sender.enqueue_event(conn, event, dests)

        await self.services.persister.persist_event(
            event, Outcome.ACCEPTED, before_ids, in_transaction=hook if enqueue else None
        )
        self.state = after
        self.last = [event.event_id]
        self.sent.append((event, dests))
        return event

    async def join_remote(self, user_id: str) -> Event:
        return await self.send("m.room.member", user_id, {"membership": "join"}, user_id)

    async def leave_remote(self, user_id: str) -> Event:
        return await self.send("m.room.member", user_id, {"membership": "leave"}, user_id)

    async def message(self, body: str, sender: str | None = None) -> Event:
        return await self.send("m.room.message", sender or self.creator, {"msgtype": "m.text", "body": body})
