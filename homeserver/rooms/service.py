"""The room service: what local users do to rooms, and what the client API calls.

Creating rooms (the spec's createRoom sequence, see ``creation.py``), sending events,
joining and knocking (locally, or over federation when we are not in the room; a remote
knock is kept with its stripped state beside remote invites), inviting (remote
invitees' servers countersign first), leaving (rejecting a remote invite goes through a
resident server), kicking, banning, unbanning and forgetting; and membership and state
queries. Every event is built and persisted by the ``EventBuilder``, so every rule there
(auth checked, stored and queued in one transaction) holds here. Repeating a join, an
invite or a leave that is already in effect sends nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from homeserver.config import InvitesConfig
from homeserver.events.errors import UnsupportedRoomVersion
from homeserver.events.event import Event, StateKey
from homeserver.events.identifiers import is_valid_user_id, server_name_of
from homeserver.events.power import get_power_level, named_level
from homeserver.events.versions import DEFAULT_ROOM_VERSION, RoomVersion, get_room_version
from homeserver.net.client import FederationRequestError
from homeserver.notifier import Notifier
from homeserver.rooms.builder import AlsoInTransaction, EventBuilder
from homeserver.rooms.creation import invite_content, plan_room
from homeserver.rooms.errors import (
    BadRoomRequest,
    NotAllowed,
    RemoteJoinFailed,
    RoomError,
    RoomNotFound,
    UnsupportedVersion,
)
from homeserver.rooms.redactions import applied_redactions, served
from homeserver.rooms.remote import RemoteMembership
from homeserver.rooms.store import ReceivedInvite, RoomMembershipStore
from homeserver.util.locks import KeyedLock

log = logging.getLogger(__name__)

# Stripped state given to invitees (client-server "Stripped state"), in this order.
INVITE_STATE_TYPES = (
    "m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar", "m.room.topic",
    "m.room.canonical_alias", "m.room.encryption",
)
# Called after an invite over federation (or its rejection) is stored: (user_id, room_id).
# Resolves a room alias to (room ID, servers likely in the room); raises RoomError subclasses.
AliasResolver = Callable[[str], Awaitable[tuple[str, list[str]]]]
# A local user's current profile fields (displayname, avatar_url; unset ones left out).
ProfileLookup = Callable[[str], Awaitable[Mapping[str, str]]]


def strip_event(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """A stripped state event: type, state_key, content, sender."""
    return {k: pdu[k] for k in ("type", "state_key", "content", "sender") if k in pdu}


def stripped_size(entries: Sequence[Mapping[str, Any]]) -> int:
    """The bytes ``entries`` (stripped state) take as compact JSON: what the invite caps count."""
    return sum(len(json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode()) for e in entries)


def cut_stripped_state(entries: Sequence[Mapping[str, Any]], limits: InvitesConfig) -> list[dict[str, Any]]:
    """``entries`` stripped, in order, while they fit ``limits`` (the entries that do not
    fit are left out): a resident's ``knock_room_state``."""
    out: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        if len(out) >= limits.max_state_events:
            break
        stripped = strip_event(entry)
        cost = stripped_size([stripped])
        if size + cost <= limits.max_state_bytes:
            out.append(stripped)
            size += cost
    return out


class InviteRefused(RoomError):
    """An invite from another server over a cap (``InvitesConfig``): ``too_large`` for its
    stripped state, else for the invites held pending from its server."""

    def __init__(self, reason: str, *, too_large: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


class RoomService:
    def __init__(
        self,
        server_name: str,
        builder: EventBuilder,
        remote: RemoteMembership,
        memberships: RoomMembershipStore,
        notifier: Notifier | None = None,
    ) -> None:
        self.server_name = server_name
        self.builder = builder
        self.store = builder.store
        self.persister = builder.persister
        self.remote = remote
        self.memberships = memberships
        # Told of invites and knocks held outside room state (wakes /sync).
        self.notifier = notifier if notifier is not None else builder.persister.notifier
        # Set by the app factory (rooms/directory.py): joins by alias need it.
        self.alias_resolver: AliasResolver | None = None
        # Serialises one user's membership changes in one room.
        self._member_locks: KeyedLock[tuple[str, str]] = KeyedLock()
        # Caps on what other servers' invites may hold here (set by the app factory).
        self.invite_limits = InvitesConfig()
        # Version of rooms created without one (``rooms.default_room_version``, set likewise).
        self.default_room_version: RoomVersion = DEFAULT_ROOM_VERSION
        # Set by the app factory: member events we build for our users carry their profile.
        self.profile_lookup: ProfileLookup | None = None

    # ------------------------------------------------------------------ helpers

    def _is_local(self, user_id: str) -> bool:
        return server_name_of(user_id) == self.server_name

    def _require_local(self, user_id: str) -> None:
        if not is_valid_user_id(user_id) or not self._is_local(user_id):
            raise BadRoomRequest(f"{user_id!r} is not a user of this server")

    def _member_lock(self, user_id: str, room_id: str) -> AbstractAsyncContextManager[None]:
        return self._member_locks((user_id, room_id))

    async def with_profile(self, user_id: str, content: Mapping[str, Any]) -> dict[str, Any]:
        """``content`` with ``user_id``'s current displayname and avatar_url (a local user's;
        unset fields are left out, and what ``content`` already names wins)."""
        out = dict(content)
        if self.profile_lookup is not None and self._is_local(user_id):
            try:
                profile = await self.profile_lookup(user_id)
            except Exception:
                log.exception("profile look-up failed", extra={"user_id": user_id})
                profile = {}
            for key in ("displayname", "avatar_url"):
                value = profile.get(key)
                if isinstance(value, str) and key not in out:
                    out[key] = value
        return out

    async def participating(self, room_id: str) -> bool:
        """Whether one of our users is joined to the room (we hold its live state)."""
        return await self.store.has_joined_member_of(room_id, self.server_name)

    async def _state_membership(self, user_id: str, room_id: str) -> tuple[str | None, str | None]:
        return await self.store.current_membership(room_id, user_id)

    # ------------------------------------------------------------------ create, send

    async def create_room(
        self,
        creator: str,
        *,
        room_version: str | None = None,
        preset: str | None = None,
        name: str | None = None,
        topic: str | None = None,
        invite: Sequence[str] = (),
        initial_state: Sequence[Mapping[str, Any]] = (),
        creation_content: Mapping[str, Any] | None = None,
        power_level_content_override: Mapping[str, Any] | None = None,
        is_direct: bool = False,
        visibility: str = "private",
        member_content: Mapping[str, Any] | None = None,
        canonical_alias: str | None = None,
    ) -> str:
        """Create a room; return its ID. ``member_content`` adds to the creator's join
        (displayname, avatar_url); ``canonical_alias`` (already reserved by the caller) is
        sent as the m.room.canonical_alias event. Invites that fail are logged, not fatal."""
        self._require_local(creator)
        try:
            version = get_room_version(room_version) if room_version is not None else self.default_room_version
        except UnsupportedRoomVersion:
            raise UnsupportedVersion(room_version) from None
        if creation_content is not None and not isinstance(creation_content, Mapping):
            raise BadRoomRequest("creation_content must be an object")
        plan = plan_room(
            version, creator, preset=preset, visibility=visibility, name=name, topic=topic,
            invite=invite, initial_state=initial_state, creation_content=creation_content,
            power_level_content_override=power_level_content_override, canonical_alias=canonical_alias,
        )
        room_id: str | None = None
        if not version.room_id_is_create_hash:
            local = "".join(secrets.choice(string.ascii_letters) for _ in range(18))
            room_id = f"!{local}:{self.server_name}"
        # 1. The create event (a v12 room's ID is its create event's hash).
        create = await self.builder.create_event(version, creator, room_id, plan.create_content)
        room_id = create.room_id
        async with self.persister.room_lock(room_id):
            # 2. The creator's join; 3-7. power levels, canonical alias, preset, initial_state,
            # name, topic.
            join = await self.with_profile(creator, {**dict(member_content or {}), "membership": "join"})
            await self.builder.send_locked(room_id, "m.room.member", creator, join, creator)
            for draft in plan.state:
                await self.builder.send_locked(room_id, draft.type, creator, draft.content, draft.state_key)
        # 8. Invites.
        for target in plan.invites:
            try:
                await self.invite(creator, room_id, target, is_direct=is_direct)
            except RoomError as e:
                log.warning("invite at room creation failed",
                            extra={"room_id": room_id, "target": target, "reason": str(e)})
        log.info("room created", extra={"room_id": room_id, "version": version.identifier, "creator": creator})
        return room_id

    async def send_event(
        self, sender: str, room_id: str, event_type: str, content: Mapping[str, Any],
        state_key: str | None = None, *, also: AlsoInTransaction | None = None,
    ) -> Event:
        """Send a message or state event as ``sender``. Member events that need a
        handshake (a remote invite) go through ``invite``; a redaction needs the power to
        redact its target unless the target is the sender's own."""
        self._require_local(sender)
        if not isinstance(content, Mapping):
            raise BadRoomRequest("content must be an object")
        if event_type == "m.room.member" and state_key is not None and content.get("membership") == "invite" \
                and not self._is_local(state_key):
            await self.invite(sender, room_id, state_key, is_direct=content.get("is_direct") is True)
            _, event_id = await self.get_membership(state_key, room_id)
            stored = await self.store.get_event(event_id or "")
            if stored is None:
                raise RoomNotFound(room_id)
            return stored.event
        if await self.store.get_room_version(room_id) is None:
            raise RoomNotFound(room_id)
        if event_type == "m.room.redaction" and state_key is None:
            # Applied when serving whenever its sender is on the target's server
            # (rooms/redactions.py): a local user may send only one they may apply.
            target = content.get("redacts")
            if not isinstance(target, str) or not target.startswith("$"):
                raise BadRoomRequest("An m.room.redaction needs the event ID it redacts in redacts")
            if not await self.may_redact(sender, room_id, target):
                raise NotAllowed("You may redact only your own events without the power to")
        return await self.builder.send(room_id, event_type, sender, content, state_key, also=also)

    # ------------------------------------------------------------------ join

    async def join(
        self, user_id: str, room_id_or_alias: str, via: Sequence[str] = (),
        content: Mapping[str, Any] | None = None,
    ) -> str:
        """Join a room; return its ID. Over federation when none of our users is in it. An
        alias is resolved first (by its server) and the servers it names are tried first."""
        self._require_local(user_id)
        room_id, via = await self._target(room_id_or_alias, via)
        body = await self.with_profile(user_id, {**dict(content or {}), "membership": "join"})
        async with self._member_lock(user_id, room_id):
            membership, _ = await self._state_membership(user_id, room_id)
            if membership == "join":
                return room_id  # already joined: nothing to send
            if await self.participating(room_id):
                await self.builder.send(room_id, "m.room.member", user_id, body, user_id)
            else:
                await self.remote.join(user_id, room_id, await self._servers_for(user_id, room_id, via), body)
            await self.memberships.delete_invite(user_id, room_id)
            await self.memberships.unforget(user_id, room_id)
        return room_id

    async def _target(self, room_id_or_alias: str, via: Sequence[str]) -> tuple[str, Sequence[str]]:
        """The room ID, and the servers to try: an alias is resolved first (by its server)
        and the servers it names come before ``via``."""
        if room_id_or_alias.startswith("#"):
            if self.alias_resolver is None:
                raise RoomNotFound(room_id_or_alias, "room aliases are not supported")
            room_id_or_alias, alias_servers = await self.alias_resolver(room_id_or_alias)
            via = [*alias_servers, *via]
        if not room_id_or_alias.startswith("!"):
            raise BadRoomRequest(f"{room_id_or_alias!r} is not a room ID")
        return room_id_or_alias, via

    async def _servers_for(self, user_id: str, room_id: str, via: Sequence[str]) -> list[str]:
        """Resident candidates: ``via``, the inviter's server, the room ID's server
        (before v12), then servers our last known state of the room has joined."""
        servers = list(via)
        invite = await self.memberships.get_invite(user_id, room_id)
        if invite is not None:
            servers.append(server_name_of(invite.sender))
        domain = server_name_of(room_id)
        if domain:
            servers.append(domain)
        state = await self.store.get_current_state_ids(room_id)
        if state:
            servers.extend(sorted(await self.store.joined_servers(state)))
        return [s for s in dict.fromkeys(servers) if s and s != self.server_name]

    # ------------------------------------------------------------------ knock

    async def knock(
        self, user_id: str, room_id_or_alias: str, via: Sequence[str] = (), reason: str | None = None,
    ) -> str:
        """Knock on a room (ask to be invited); return its ID. Built here when one of our
        users is in the room, else through ``make_knock``/``send_knock`` with a resident
        server, the knock and the stripped state answered stored for /sync. Knocking again
        while a knock stands sends nothing."""
        self._require_local(user_id)
        room_id, via = await self._target(room_id_or_alias, via)
        content: dict[str, Any] = {"membership": "knock"}
        if reason:
            content["reason"] = reason
        content = await self.with_profile(user_id, content)
        async with self._member_lock(user_id, room_id):
            if await self.participating(room_id):
                membership, _ = await self._state_membership(user_id, room_id)
                if membership == "knock":
                    return room_id
                await self.builder.send(room_id, "m.room.member", user_id, content, user_id)
            else:
                row = await self.memberships.get_invite(user_id, room_id)
                if row is not None and row.membership == "knock":
                    return room_id
                if row is not None and row.membership == "invite":
                    raise NotAllowed("already invited to the room")
                event, stripped = await self.remote.knock(
                    user_id, room_id, await self._servers_for(user_id, room_id, via), content
                )
                stripped = cut_stripped_state(stripped, self.invite_limits)
                stripped.append(strip_event(event.pdu))
                await self.memberships.store_invite(
                    user_id, room_id, event.pdu, event.event_id, event.room_version.identifier, stripped,
                    membership="knock",
                )
                self._notify_invite(user_id, room_id)
            await self.memberships.unforget(user_id, room_id)
        return room_id

    async def stripped_state(self, state: Mapping[StateKey, str]) -> list[dict[str, Any]]:
        """The stripped state of ``state`` that identifies a room to an invitee or knocker."""
        return await self._invite_room_state(state, full=False)

    # ------------------------------------------------------------------ invite

    async def invite(self, sender: str, room_id: str, target: str, *, is_direct: bool = False,
                     reason: str | None = None) -> None:
        """Invite ``target``; a remote target's server countersigns before we persist."""
        self._require_local(sender)
        if not is_valid_user_id(target):
            raise BadRoomRequest(f"invalid user ID {target!r}")
        if await self.store.get_room_version(room_id) is None:
            raise RoomNotFound(room_id)
        membership, _ = await self._state_membership(target, room_id)
        if membership == "invite":
            return  # already invited
        content = invite_content(is_direct)
        if reason:
            content["reason"] = reason
        if self._is_local(target):
            content = await self.with_profile(target, content)
            await self.builder.send(room_id, "m.room.member", sender, content, target)
            return
        async with self.persister.room_lock(room_id):
            event, state_before = await self.builder.build_locked(room_id, "m.room.member", sender, content, target)
            stripped = await self._invite_room_state(state_before, full=True, inviter=sender)
        # The handshake runs without the room lock: a slow invitee server holds nothing.
        try:
            signed = await self.remote.invite(event, stripped)
        except FederationRequestError as e:
            if e.status == 403:
                raise NotAllowed(f"{e.destination} refused the invite") from None
            raise RemoteJoinFailed(f"invite to {e.destination} failed: {e}") from None
        async with self.persister.room_lock(room_id):
            await self.builder.persist_local(signed, state_before)

    async def _invite_room_state(
        self, state: Mapping[StateKey, str], *, full: bool, inviter: str | None = None,
    ) -> list[dict[str, Any]]:
        """The room's identifying state events (``INVITE_STATE_TYPES``) and the inviter's
        member event (their name and avatar), stripped unless ``full``."""
        keys: list[StateKey] = [(t, "") for t in INVITE_STATE_TYPES if (t, "") in state]
        if inviter is not None and ("m.room.member", inviter) in state:
            keys.append(("m.room.member", inviter))
        events = await self.store.get_events(state[k] for k in keys)
        found = [events[state[k]].event for k in keys if state[k] in events]
        out = []
        for event in served(found, await applied_redactions(self.store, found)):
            out.append(dict(event.pdu) if full else strip_event(event.pdu))
        return out

    async def receive_invite(
        self, target: str, room_id: str, pdu: Mapping[str, Any], event_id: str, room_version: str,
        invite_room_state: Sequence[Mapping[str, Any]],
    ) -> None:
        """Store an invite another server sent for one of our users (PUT /invite), unless
        it is over a cap of ``invite_limits`` (InviteRefused: nothing is stored): its
        stripped state's entries or bytes, or the invites pending from its sender's server
        (over all our users, or for ``target``; a new invite to the same room replaces the
        one it has)."""
        limits = self.invite_limits
        if len(invite_room_state) > limits.max_state_events:
            raise InviteRefused(
                f"invite_room_state has {len(invite_room_state)} entries (at most {limits.max_state_events})",
                too_large=True,
            )
        stripped = [strip_event(e) for e in invite_room_state]
        stripped.append(strip_event(pdu))
        size = stripped_size(stripped)
        if size > limits.max_state_bytes:
            raise InviteRefused(
                f"invite_room_state takes {size} bytes (at most {limits.max_state_bytes})", too_large=True
            )
        origin = server_name_of(str(pdu.get("sender", "")))
        held, for_target = await self.memberships.pending_invites_from(origin, target, room_id)
        if held >= limits.max_pending_per_server or for_target >= limits.max_pending_per_server_per_user:
            raise InviteRefused(f"too many invites from {origin} are pending here", too_large=False)
        await self.memberships.store_invite(target, room_id, pdu, event_id, room_version, stripped)
        self._notify_invite(target, room_id)

    def _notify_invite(self, user_id: str, room_id: str) -> None:
        try:
            self.notifier.on_invite(user_id, room_id)
        except Exception:
            log.exception("notifying an invite failed", extra={"room_id": room_id})

    async def get_invite_state(self, user_id: str, room_id: str, membership: str = "invite") -> list[dict[str, Any]]:
        """Stripped state for an invite (or a knock): as received over federation, else
        from our state."""
        invite = await self.memberships.get_invite(user_id, room_id)
        if invite is not None and invite.membership == membership:
            return list(invite.invite_room_state)
        state = await self.store.get_current_state_ids(room_id)
        member = state.get(("m.room.member", user_id))
        stored = await self.store.get_event(member) if member is not None else None
        inviter = stored.event.sender if stored is not None and stored.event.sender != user_id else None
        out = await self._invite_room_state(state, full=False, inviter=inviter)
        if stored is not None:
            out.append(strip_event(stored.event.pdu))
        return out

    async def invites_since(self, user_id: str, stream_id: int = 0) -> list[ReceivedInvite]:
        """Invites received over federation (and their rejections) past ``stream_id``."""
        return await self.memberships.invites_for_user(user_id, stream_id)

    # ------------------------------------------------------------------ leave and moderation

    async def leave(self, user_id: str, room_id: str, reason: str | None = None) -> None:
        """Leave a room, or reject an invite (through a resident server when we are not
        in the room)."""
        self._require_local(user_id)
        content: dict[str, Any] = {"membership": "leave"}
        if reason:
            content["reason"] = reason
        async with self._member_lock(user_id, room_id):
            invite = await self.memberships.get_invite(user_id, room_id)
            if invite is not None and invite.membership in ("leave", "ban") \
                    and not await self.participating(room_id):
                return  # already rejected, retracted or ended by the room
            if invite is not None and invite.membership in ("invite", "knock") \
                    and not await self.participating(room_id):
                # Rejecting an invite, or retracting a knock: through the inviter's server,
                # the room ID's, and those of the users who set the room's stripped state.
                servers = [server_name_of(invite.sender), server_name_of(room_id),
                           *(server_name_of(e["sender"]) for e in invite.invite_room_state
                             if isinstance(e.get("sender"), str))]
                event = await self.remote.leave(user_id, room_id, servers, content)
                await self.memberships.mark_rejected(user_id, room_id, event.pdu, event.event_id)
                self._notify_invite(user_id, room_id)
                return
            membership, _ = await self._state_membership(user_id, room_id)
            if membership is None:
                if await self.store.get_room_version(room_id) is None:
                    raise RoomNotFound(room_id)
                raise NotAllowed("not a member of the room")
            if membership == "leave":
                return  # already left
            await self.builder.send(room_id, "m.room.member", user_id, content, user_id)

    async def _moderate(self, sender: str, room_id: str, target: str, membership: str,
                        reason: str | None, allowed_from: tuple[str | None, ...]) -> None:
        self._require_local(sender)
        if not is_valid_user_id(target):
            raise BadRoomRequest(f"invalid user ID {target!r}")
        if await self.store.get_room_version(room_id) is None:
            raise RoomNotFound(room_id)
        current, _ = await self._state_membership(target, room_id)
        if current not in allowed_from:
            raise NotAllowed(f"{target} is not in a membership that can change to {membership} ({current})")
        content: dict[str, Any] = {"membership": membership}
        if reason:
            content["reason"] = reason
        await self.builder.send(room_id, "m.room.member", sender, content, target)

    async def kick(self, sender: str, room_id: str, target: str, reason: str | None = None) -> None:
        await self._moderate(sender, room_id, target, "leave", reason, ("join", "invite", "knock"))

    async def ban(self, sender: str, room_id: str, target: str, reason: str | None = None) -> None:
        await self._moderate(sender, room_id, target, "ban", reason, (None, "join", "invite", "knock", "leave"))

    async def unban(self, sender: str, room_id: str, target: str) -> None:
        await self._moderate(sender, room_id, target, "leave", None, ("ban",))

    async def forget(self, user_id: str, room_id: str) -> None:
        self._require_local(user_id)
        membership, _ = await self.get_membership(user_id, room_id)
        if membership in ("join", "invite", "knock"):
            raise BadRoomRequest("leave the room before forgetting it")
        if membership is None and await self.store.get_room_version(room_id) is None:
            raise RoomNotFound(room_id)
        await self.memberships.forget(user_id, room_id)

    # ------------------------------------------------------------------ queries

    async def get_membership(self, user_id: str, room_id: str) -> tuple[str | None, str | None]:
        """(membership, event ID) in the current state; a remote invite (or its
        rejection) counts unless the state says joined or banned."""
        membership, event_id = await self._state_membership(user_id, room_id)
        if membership in ("join", "ban"):
            return membership, event_id
        invite = await self.memberships.get_invite(user_id, room_id)
        if invite is not None and (membership is None or not await self.participating(room_id)):
            return invite.membership, invite.event_id
        return membership, event_id

    async def get_current_state(self, room_id: str) -> dict[StateKey, Event]:
        ids = await self.store.get_current_state_ids(room_id)
        if not ids and await self.store.get_room_version(room_id) is None:
            raise RoomNotFound(room_id)
        events = await self.store.get_events(ids.values())
        return {k: events[eid].event for k, eid in ids.items() if eid in events}

    async def may_redact(self, user_id: str, room_id: str, target_id: str) -> bool:
        """Whether ``user_id`` may redact ``target_id`` (its own event, or with the power
        levels' ``redact`` level). The auth rules of room v3 and later accept any
        redaction and leave this check to whoever applies it; a client gets a 403 here."""
        target = await self.store.get_event(target_id)
        if target is not None and target.event.room_id == room_id and target.event.sender == user_id:
            return True
        state = await self.get_current_state(room_id)
        auth_state = {k: state[k] for k in (("m.room.create", ""), ("m.room.power_levels", "")) if k in state}
        return get_power_level(user_id, auth_state) >= named_level(auth_state, "redact")

    async def get_state_event(self, room_id: str, event_type: str, state_key: str) -> Event | None:
        event_id = await self.store.current_state_id(room_id, (event_type, state_key))
        if event_id is None:
            return None
        stored = await self.store.get_event(event_id)
        return None if stored is None else stored.event

    async def rooms_for_user(self, user_id: str) -> dict[str, str]:
        """room ID -> membership (join/invite/leave/ban/knock), forgotten rooms left out."""
        out = await self.store.memberships_of_user(user_id)
        for invite in await self.memberships.invites_for_user(user_id):
            membership = out.get(invite.room_id)
            if membership in ("join", "ban"):
                continue
            if membership is None or not await self.participating(invite.room_id):
                out[invite.room_id] = invite.membership
        forgotten = await self.memberships.forgotten(user_id)
        return {r: m for r, m in out.items() if not (r in forgotten and m in ("leave", "ban"))}
