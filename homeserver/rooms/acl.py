"""Server ACLs (``m.room.server_acl``): which servers may take part in a room.

The spec's order: no ACL in the room's current state, allow; an IP literal server name
with ``allow_ip_literals`` false, deny; a name matching ``deny``, deny; matching
``allow``, allow; else deny. Names are compared without their port, case-insensitively,
against glob patterns (``*`` any run of characters, ``?`` exactly one).

Enforced where another server acts on a room (``federation/transport.py``: each PDU and
room EDU of a ``/send``, the room read endpoints; ``federation/rooms_api.py``: joins,
leaves, knocks and invites). The current ACL event comes from the persister's cached
room head (one look-up when the room is cold); each ACL event is parsed once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.events.event import StateKey
from homeserver.net.client import is_ip_literal, split_server_name
from homeserver.rooms.persist import EventPersister
from homeserver.storage.events import EventStore
from homeserver.util.glob import Glob, compile_glob

ACL_KEY: StateKey = ("m.room.server_acl", "")
CACHE_SIZE = 1_000


def _host(server_name: str) -> str:
    """The server name without its port (``[v6]:port`` keeps its brackets)."""
    try:
        return split_server_name(server_name)[0]
    except ValueError:  # not a valid server name: matched as it is
        return server_name


@dataclass(frozen=True, slots=True)
class ServerAcl:
    allow: tuple[Glob, ...]
    deny: tuple[Glob, ...]
    allow_ip_literals: bool

    @classmethod
    def from_content(cls, content: Mapping[str, Any]) -> ServerAcl:
        def patterns(key: str) -> tuple[Glob, ...]:
            value = content.get(key)
            if not isinstance(value, list):
                return ()
            return tuple(compile_glob(p) for p in value if isinstance(p, str))

        literals = content.get("allow_ip_literals")
        return cls(patterns("allow"), patterns("deny"), literals if isinstance(literals, bool) else True)

    def allows(self, server_name: str) -> bool:
        host = _host(server_name)
        if not self.allow_ip_literals and is_ip_literal(host):
            return False
        if any(p.fullmatch(host) for p in self.deny):
            return False
        return any(p.fullmatch(host) for p in self.allow)


class AclChecker:
    def __init__(self, store: EventStore, persister: EventPersister) -> None:
        self._store = store
        self._persister = persister
        self._parsed: OrderedDict[str, ServerAcl] = OrderedDict()  # ACL event ID -> ACL

    async def allows(self, server_name: str, room_id: str) -> bool:
        """Whether the room's current server ACL lets ``server_name`` take part in it."""
        acl_id = await self._persister.current_state_id(room_id, ACL_KEY)
        if acl_id is None:
            return True
        acl = self._parsed.get(acl_id)
        if acl is None:
            stored = await self._store.get_event(acl_id)
            if stored is None:
                return True  # not held (cannot happen for current state): nothing to enforce
            acl = ServerAcl.from_content(stored.event.content)
            self._parsed[acl_id] = acl
            while len(self._parsed) > CACHE_SIZE:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(acl_id)
        return acl.allows(server_name)
