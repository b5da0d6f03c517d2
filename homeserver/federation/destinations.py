"""The outbound sender's pure rules: which servers hear about an event of ours, which
EDUs are about our own users, which /send replies are final, and how backoff grows.
No I/O here: the sender and its destination queues act on these decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from homeserver.config import OutboundConfig
from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import is_valid_server_name, server_name_of

# 4xx replies to /send that no retry can fix: the batch is dropped (logged, counted).
PERMANENT_STATUSES = frozenset({400, 403, 405, 413, 414})

MemberState = Event | Mapping[str, Any]  # a member event, or just its content


def _membership_of(value: MemberState) -> str | None:
    content = value.content if isinstance(value, Event) else value
    m = content.get("membership") if isinstance(content, Mapping) else None
    return m if isinstance(m, str) else None


def joined_servers(state: Mapping[StateKey, MemberState]) -> set[str]:
    """Servers with at least one joined member in ``state``."""
    servers: set[str] = set()
    for (etype, state_key), value in state.items():
        if etype == "m.room.member" and _membership_of(value) == "join":
            server = server_name_of(state_key)
            if server:
                servers.add(server)
    return servers


def destinations_for_event(
    event: Event,
    state_before: Mapping[StateKey, MemberState],
    state_after: Mapping[StateKey, MemberState] | None = None,
    *,
    server_name: str,
) -> set[str]:
    """The servers an event of ours goes to.

    1. Every server with a joined member in the state before the event,
    2. and, for a join, in the state after it (the joining server hears about its join);
    3. for a membership event that targets another user (invite, kick, ban, a leave sent on
       someone's behalf), that user's server, even with no member left in the room;
    4. never ourselves.
    """
    # 1.
    servers = joined_servers(state_before)
    membership = event.membership if event.type == "m.room.member" else None
    # 2.
    if membership == "join" and state_after is not None:
        servers |= joined_servers(state_after)
    # 3.
    if event.type == "m.room.member" and event.state_key is not None:
        targets_other = event.state_key != event.sender
        if membership in ("invite", "ban") or (membership == "leave" and targets_other):
            target = server_name_of(event.state_key)
            if target:
                servers.add(target)
    # 4.
    servers.discard(server_name)
    return {s for s in servers if is_valid_server_name(s)}


def other_servers(destinations: Iterable[str], server_name: str) -> list[str]:
    """The valid server names of ``destinations`` but ours, sorted, each once."""
    return sorted({d for d in destinations if d != server_name and is_valid_server_name(d)})


# The memberships a remote server may hand us through our own send_* handshakes.
HANDSHAKE_MEMBERSHIPS = frozenset({"join", "leave", "knock"})


def handshake_refusal(event: Event, origin: str | None, server_name: str) -> str | None:
    """Why a remote event accepted through our send_* handshake may not be announced
    (None: it may). Only an ``m.room.member`` join, leave or knock that a user of the
    handshake's ``origin`` (another server) sent about themself."""
    if origin is None or origin == server_name or not is_valid_server_name(origin):
        return "no handshake origin"
    if event.type != "m.room.member" or event.membership not in HANDSHAKE_MEMBERSHIPS:
        return "not a join, leave or knock"
    if event.state_key != event.sender:
        return "the state_key is not the sender"
    if server_name_of(event.sender) != origin:
        return "the sender is not a user of the handshake's origin"
    return None


def is_local_user(user_id: object, server_name: str) -> bool:
    return isinstance(user_id, str) and user_id.startswith("@") and server_name_of(user_id) == server_name


def edu_is_ours(edu_type: str, content: Mapping[str, Any], server_name: str) -> bool:
    """Whether an EDU may leave: m.typing, m.receipt, m.presence, m.direct_to_device,
    m.device_list_update or m.signing_key_update whose users are all of ``server_name``."""
    if edu_type == "m.typing":
        return is_local_user(content.get("user_id"), server_name)
    if edu_type == "m.receipt":
        users: list[object] = []
        for receipts in content.values():
            if not isinstance(receipts, Mapping):
                return False
            for by_user in receipts.values():
                if not isinstance(by_user, Mapping):
                    return False
                users.extend(by_user.keys())
        return bool(users) and all(is_local_user(u, server_name) for u in users)
    if edu_type == "m.presence":
        push = content.get("push")
        if not isinstance(push, list) or not push:
            return False
        return all(isinstance(p, Mapping) and is_local_user(p.get("user_id"), server_name) for p in push)
    if edu_type == "m.direct_to_device":
        target = to_device_target(content)
        return is_local_user(content.get("sender"), server_name) and target not in (None, server_name)
    if edu_type in ("m.device_list_update", "m.signing_key_update"):
        return is_local_user(content.get("user_id"), server_name)
    return False


def to_device_target(content: Mapping[str, Any]) -> str | None:
    """The one server whose users an m.direct_to_device EDU addresses (it goes there and
    nowhere else); None when it names no user or users of several servers."""
    messages = content.get("messages")
    if not isinstance(messages, Mapping) or not messages:
        return None
    servers = {server_name_of(u) if isinstance(u, str) else "" for u in messages}
    if len(servers) != 1:
        return None
    server = servers.pop()
    return server if is_valid_server_name(server) else None


def next_interval_ms(previous_ms: int, config: OutboundConfig) -> int:
    """The next backoff interval (before jitter) after one more failure."""
    if previous_ms <= 0:
        return int(config.backoff_initial_seconds * 1000)
    return int(min(previous_ms * config.backoff_factor, config.backoff_ceiling_seconds * 1000))


def is_dead(first_failure_ts: int, now_ms: int, config: OutboundConfig) -> bool:
    """Whether a destination failing since ``first_failure_ts`` is past the dead horizon."""
    return now_ms - first_failure_ts >= config.dead_after_days * 86_400_000


def next_txn_id(last_txn_id: int, now_ms: int) -> int:
    """txnIds increase and never fall below the clock, so they stay unique even if the
    destination's row is lost."""
    return max(last_txn_id + 1, now_ms)
