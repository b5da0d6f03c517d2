"""The resident server's side of the membership handshakes, served to other servers.

``make_join``/``make_leave``/``make_knock`` answer a template built like any local event
(prev_events from our forward extremities, auth events from our state) after checking
that the membership would pass the auth rules (join rules, bans: 403 M_FORBIDDEN) and
that the joining or knocking server implements the room's version (400
M_INCOMPATIBLE_ROOM_VERSION). ``send_join``/``send_leave`` (v1 and v2) and ``send_knock``
(v1) check the signed event (signatures through the keyring, hash, shape), authorise it
against its auth events, the state before it and the current state, and persist it;
``send_knock`` answers the room's stripped state (``knock_room_state``). In the same
database transaction the event is queued for the room's other servers (those joined at
the event or now, and for a leave those joined just before it; never the requesting
server nor us): the spec asks the resident to announce what it accepted, nobody else
will, and it is the one exception to "only our own events leave" (the architecture's
invariant 2). The handlers pass ``Accepted.HANDSHAKE`` with the request's origin, and
this module is the only one that may: the sender admits only a join, leave or knock of
that origin's user for themself. A retried ``send_*`` of an event we already hold is
answered again and queues nothing.
``PUT /v2/invite`` checks and countersigns an invite for one of our users and stores it
with its stripped state, within the caps of ``RoomService.invite_limits`` (entries and
bytes of the stripped state: 400 M_TOO_LARGE; invites pending from the origin: 403
M_FORBIDDEN; either way nothing is stored). ``/query/profile`` answers from the profile lookup the client
API provides.

Each handler answers while the other server waits, as the spec's handshakes require; the
work is bounded by one event and the room's state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from homeserver.crypto.keys import ServerSigningKey
from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.events.auth import check_auth_events_shape, check_auth_rules
from homeserver.events.errors import AuthError, EventError, UnsupportedRoomVersion
from homeserver.events.event import Event, StateKey
from homeserver.events.hashes import compute_event_id
from homeserver.events.identifiers import is_valid_user_id, server_name_of
from homeserver.events.power import JOIN_RULES, get_power_level, named_level
from homeserver.events.signing import HashCheck, check_content_hash, sign_event
from homeserver.events.versions import RoomVersion, get_room_version
from homeserver.federation.auth import BODY, ORIGIN
from homeserver.http import json_response
from homeserver.rooms.builder import CREATE, EventBuilder
from homeserver.rooms.checks.receipt import Dropped, PduChecker
from homeserver.rooms.errors import NotAllowed
from homeserver.rooms.outbox import Accepted
from homeserver.rooms.persist import PersistError
from homeserver.rooms.redactions import served_pdus
from homeserver.rooms.service import InviteRefused, RoomService
from homeserver.storage.database import Connection
from homeserver.storage.events import Outcome
from homeserver.storage.users import UserStore

# A user's public profile (displayname, avatar_url, ...), or None if no such user.
ProfileLookup = Callable[[str], Awaitable[Mapping[str, Any] | None]]



def user_store_profiles(users: UserStore) -> ProfileLookup:
    """The profile lookup over the client API's user store."""

    async def lookup(user_id: str) -> Mapping[str, Any] | None:
        profile = await users.get_profile(user_id)
        return None if profile is None else {"displayname": profile.displayname, "avatar_url": profile.avatar_url}

    return lookup


V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


def invalid(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


def too_large(message: str) -> MatrixError:
    return MatrixError(400, "M_TOO_LARGE", message)


def incompatible(version: str) -> MatrixError:
    return MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION",
                       "Your homeserver does not support the version of this room", room_version=version)


class FederationRoomsAPI:
    def __init__(
        self,
        server_name: str,
        signing_key: ServerSigningKey,
        rooms: RoomService,
        checker: PduChecker,
        profiles: ProfileLookup | None = None,
    ) -> None:
        self.server_name = server_name
        self._key = signing_key
        self._rooms = rooms
        self._builder: EventBuilder = rooms.builder
        self._store = rooms.store
        self._persister = rooms.persister
        self._outbox = rooms.builder.outbox
        self._checker = checker
        self._profiles = profiles

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(V1 + "/make_join/{roomId}/{userId}", self.on_make_join),
            web.put(V2 + "/send_join/{roomId}/{eventId}", self.on_send_join),
            web.put(V1 + "/send_join/{roomId}/{eventId}", self.on_send_join_v1),
            web.get(V1 + "/make_leave/{roomId}/{userId}", self.on_make_leave),
            web.put(V2 + "/send_leave/{roomId}/{eventId}", self.on_send_leave),
            web.put(V1 + "/send_leave/{roomId}/{eventId}", self.on_send_leave_v1),
            web.get(V1 + "/make_knock/{roomId}/{userId}", self.on_make_knock),
            web.put(V1 + "/send_knock/{roomId}/{eventId}", self.on_send_knock),
            web.put(V2 + "/invite/{roomId}/{eventId}", self.on_invite),
            web.get(V1 + "/query/profile", self.on_query_profile),
        ]

    # ------------------------------------------------------------------ make_*

    async def _room(self, room_id: str) -> RoomVersion:
        version = await self._store.get_room_version(room_id)
        if version is None or not await self._rooms.participating(room_id):
            raise not_found("Unknown room")
        return version

    async def _make(self, request: web.Request, membership: str) -> dict[str, Any]:
        room_id, user_id = request.match_info["roomId"], request.match_info["userId"]
        origin = request[ORIGIN]
        if not is_valid_user_id(user_id) or server_name_of(user_id) != origin:
            raise forbidden("The user is not a user of the requesting server")
        version = await self._room(room_id)
        if membership in ("join", "knock"):
            # 1. The joining server must implement the room's version (default: "1"; a
            # knocking server must name its versions).
            offered = request.query.getall("ver", ["1"] if membership == "join" else [])
            if not offered:
                raise MatrixError(400, "M_MISSING_PARAM", "ver is required")
            if version.identifier not in offered:
                raise incompatible(version.identifier)
        content: dict[str, Any] = {"membership": membership}
        async with self._persister.room_lock(room_id):
            # 2. A template built like our own next event.
            template, version, state_before = await self._builder.template_locked(
                room_id, "m.room.member", user_id, content, user_id
            )
            # 3. Restricted rooms: a user of ours who may invite vouches for the join.
            if membership == "join":
                via = await self._authorise_restricted(user_id, state_before)
                if via is not None:
                    content["join_authorised_via_users_server"] = via
                    template, version, state_before = await self._builder.template_locked(
                        room_id, "m.room.member", user_id, content, user_id
                    )
            # 4. The membership must pass the auth rules against our current state.
            # (A join we authorise will carry our signature: stand in for it here.)
            signatures = {self.server_name: {"ed25519:provisional": ""}} if "join_authorised_via_users_server" \
                in content else {}
            provisional = Event.from_pdu({**template, "hashes": {}, "signatures": signatures}, version,
                                         event_id="$provisional")
            try:
                check_auth_rules(provisional, await self._builder.auth_state(provisional, state_before))
            except AuthError as e:
                raise forbidden(f"You may not {membership} this room: {e.reason}") from None
        template["origin"] = self.server_name
        return {"room_version": version.identifier, "event": template}

    async def _authorise_restricted(self, user_id: str, state: Mapping[StateKey, str]) -> str | None:
        """For a restricted join rule and a user not yet invited: the user of ours who
        authorises the join, per the rule's ``allow`` conditions."""
        jr_id = state.get(JOIN_RULES)
        if jr_id is None:
            return None
        jr = await self._store.get_event(jr_id)
        rule = jr.event.content.get("join_rule") if jr is not None else None
        if rule not in ("restricted", "knock_restricted"):
            return None
        member_id = state.get(("m.room.member", user_id))
        if member_id is not None:
            member = await self._store.get_event(member_id)
            if member is not None and member.event.membership in ("invite", "join"):
                return None
        assert jr is not None
        allow = jr.event.content.get("allow")
        rooms: list[str] = []
        if isinstance(allow, list):
            rooms = [c["room_id"] for c in allow if isinstance(c, dict) and c.get("type") == "m.room_membership"
                     and isinstance(c.get("room_id"), str)]
        known = [r for r in rooms if await self._rooms.participating(r)]
        if not known:
            raise MatrixError(400, "M_UNABLE_TO_AUTHORISE_JOIN", "No allowed room is known here")
        memberships = [(await self._rooms.get_membership(user_id, r))[0] for r in known]
        if "join" not in memberships:
            raise forbidden("You are not a member of any room that allows joining this one")
        auth_state = await self._events_of(state)
        invite_level = named_level(auth_state, "invite")
        for (etype, user), event in sorted(auth_state.items()):
            if etype == "m.room.member" and server_name_of(user) == self.server_name \
                    and event.membership == "join" and get_power_level(user, auth_state) >= invite_level:
                return user
        raise MatrixError(400, "M_UNABLE_TO_GRANT_JOIN", "No user here can authorise the join")

    async def _events_of(self, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        found = await self._store.get_events(state.values())
        return {k: found[e].event for k, e in state.items() if e in found}

    async def on_make_join(self, request: web.Request) -> web.Response:
        return json_response(await self._make(request, "join"))

    async def on_make_leave(self, request: web.Request) -> web.Response:
        return json_response(await self._make(request, "leave"))

    async def on_make_knock(self, request: web.Request) -> web.Response:
        return json_response(await self._make(request, "knock"))

    # ------------------------------------------------------------------ send_*

    async def _received_member(
        self, request: web.Request, membership: str
    ) -> tuple[Event, RoomVersion]:
        """The spec's validation of a send_join/send_leave body: 400 M_INVALID_PARAM
        unless signed, of type m.room.member with the membership, sent by a user of the
        origin for themself, with the path's event and room IDs."""
        room_id, event_id = request.match_info["roomId"], request.match_info["eventId"]
        origin = request[ORIGIN]
        pdu = request.get(BODY)
        if not isinstance(pdu, dict):
            raise bad_json("The body must be a PDU")
        version = await self._store.get_room_version(room_id)
        if version is None:
            raise not_found("Unknown room")
        try:
            if compute_event_id(pdu, version) != event_id:
                raise invalid("The event ID does not match the event")
            content = pdu.get("content")
            via = content.get("join_authorised_via_users_server") if isinstance(content, dict) else None
            if membership == "join" and isinstance(via, str) and server_name_of(via) == self.server_name:
                # A restricted join we authorise: we sign it before it is checked (our
                # signature is one it needs), stored or sent anywhere; the auth rules
                # still decide whether the user named may authorise it.
                pdu = sign_event(pdu, version, self.server_name, self._key.signing_key)
            event = await self._checker.check(pdu, version, event_id)
        except Dropped as e:
            raise invalid(f"The event does not verify: {e}") from None
        except EventError as e:
            raise invalid(f"Malformed event: {e}") from None
        if event.redacted_on_receipt:
            raise invalid("The event's content hash does not match")
        if event.room_id != room_id:
            raise invalid("The event is for another room")
        if event.type != "m.room.member" or event.membership != membership:
            raise invalid(f"The event is not a {membership} membership event")
        if server_name_of(event.sender) != origin:
            raise invalid("The sender is not a user of the requesting server")
        if event.state_key != event.sender:
            raise invalid("The state_key is not the sender")
        return event, version

    async def _accept_member(self, event: Event, version: RoomVersion, origin: str) -> dict[StateKey, str]:
        """Authorise and persist a remote member event received through our send_*
        handshake from ``origin``, and announce it to the room's other servers in the same
        transaction; return the state before it. Idempotent: an event we already accepted
        is answered again and not announced again."""
        async with self._persister.room_lock(event.room_id):
            stored = await self._store.get_event(event.event_id)
            if stored is not None and stored.outcome is not Outcome.OUTLIER:
                if stored.outcome is not Outcome.ACCEPTED:
                    raise forbidden("The event was not accepted")
            else:
                try:
                    state_before = await self._persister.compute_state_before(version, event.prev_events)
                except PersistError as e:
                    raise invalid(f"Cannot place the event: {e}") from None
                # 4. Auth against its own auth events; 5. against the state before it.
                await self._check_auth_events(event)
                try:
                    await self._builder.check_auth(event, state_before)
                    # 6. And against the current state, when it differs.
                    current = await self._store.get_current_state_ids(event.room_id)
                    if current != state_before:
                        await self._builder.check_auth(event, current)
                except NotAllowed as e:
                    raise forbidden(f"The event is not allowed: {e}") from None
                # The servers in the room at the event (for a join, with the joiner; for a
                # leave, those there just before it) and those in it now.
                dests = await self._builder.destinations(event, state_before)
                if current != state_before:
                    dests |= await self._builder.destinations(event, current)
                outbox = self._outbox

                async def announce(conn: Connection) -> None:
                    await outbox.enqueue_event(conn, event, dests, Accepted.HANDSHAKE, handshake_origin=origin)

                # The hook runs only if this call stores the event (never for one held).
                await self._persister.persist_event(event, Outcome.ACCEPTED, state_before, in_transaction=announce)
            before = await self._store.get_state_ids_before(event.event_id)
        if before is None:
            raise not_found("The state before the event is not known")
        return before

    async def _check_auth_events(self, event: Event) -> None:
        found = await self._store.get_events(event.auth_events)
        if len(found) != len(set(event.auth_events)) or any(
            s.outcome is Outcome.REJECTED for s in found.values()
        ):
            raise forbidden("The event cites auth events we do not hold or rejected")
        auth_events = [found[a].event for a in dict.fromkeys(event.auth_events)]
        auth_state = {e.state_tuple: e for e in auth_events if e.is_state}
        if CREATE not in auth_state:
            create = await self._store.get_event("$" + event.room_id[1:])
            if create is not None:
                auth_state[CREATE] = create.event
        try:
            check_auth_events_shape(event, auth_events)
            check_auth_rules(event, auth_state)
        except AuthError as e:
            raise forbidden(f"The event is not allowed by its auth events: {e}") from None

    async def _send_join(self, request: web.Request) -> dict[str, Any]:
        event, version = await self._received_member(request, "join")
        state_before = await self._accept_member(event, version, request[ORIGIN])
        stored = await self._store.get_event(event.event_id)
        if stored is not None:
            event = stored.event
        chain = await self._store.get_auth_chain_ids([*state_before.values(), event.event_id])
        events = await self._store.get_events([*state_before.values(), *chain])
        state = [events[e].event for e in sorted(state_before.values()) if e in events]
        return {
            "state": await served_pdus(self._store, state),
            "auth_chain": await served_pdus(self._store, [events[e].event for e in sorted(chain) if e in events]),
            "event": event.pdu,
            "origin": self.server_name,
            "members_omitted": False,
            "servers_in_room": sorted(await self._store.joined_servers(state_before) | {self.server_name}),
        }

    async def on_send_join(self, request: web.Request) -> web.Response:
        return json_response(await self._send_join(request))

    async def on_send_join_v1(self, request: web.Request) -> web.Response:
        """The v1 form: the same answer (without the v2 keys) as ``[200, body]``."""
        body = await self._send_join(request)
        return json_response([200, {k: body[k] for k in ("state", "auth_chain", "event", "origin")}])

    async def on_send_leave(self, request: web.Request) -> web.Response:
        event, version = await self._received_member(request, "leave")
        await self._accept_member(event, version, request[ORIGIN])
        return json_response({})

    async def on_send_leave_v1(self, request: web.Request) -> web.Response:
        await self.on_send_leave(request)
        return json_response([200, {}])

    async def on_send_knock(self, request: web.Request) -> web.Response:
        """Accept a knock into the room (announced to its other servers) and answer the
        stripped state the knocking user's client shows."""
        event, version = await self._received_member(request, "knock")
        await self._accept_member(event, version, request[ORIGIN])
        state = await self._store.get_current_state_ids(event.room_id)
        return json_response({"knock_room_state": await self._rooms.stripped_state(state)})

    # ------------------------------------------------------------------ invite

    async def on_invite(self, request: web.Request) -> web.Response:
        room_id, event_id = request.match_info["roomId"], request.match_info["eventId"]
        origin = request[ORIGIN]
        body = request.get(BODY)
        if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
            raise bad_json("The body must hold room_version and event")
        raw_version = body.get("room_version")
        try:
            version = get_room_version(raw_version)
        except UnsupportedRoomVersion:
            raise incompatible(str(raw_version)) from None
        signed = await self.accept_invite(
            room_id, event_id, origin, version, dict(body["event"]), body.get("invite_room_state", [])
        )
        return json_response({"event": signed})

    async def accept_invite(
        self, room_id: str, event_id: str, origin: str, version: RoomVersion, pdu: dict[str, Any], state: Any
    ) -> dict[str, Any]:
        """Check an invite for one of our users (v1 and v2 alike), store it with its
        stripped state ``state`` and return it countersigned."""
        # 1. Signature, format and hash of the invite.
        try:
            if compute_event_id(pdu, version) != event_id:
                raise invalid("The event ID does not match the event")
            event = await self._checker.check(pdu, version, event_id)
        except Dropped as e:
            raise invalid(f"The invite does not verify: {e}") from None
        except EventError as e:
            raise invalid(f"Malformed invite: {e}") from None
        if check_content_hash(pdu, version)[0] is HashCheck.MISMATCH:
            raise invalid("The invite's content hash does not match")
        # 2. The spec's checks: an invite, by a user of the origin, for a user of ours.
        if event.room_id != room_id:
            raise invalid("The invite is for another room")
        if event.type != "m.room.member" or event.membership != "invite" or event.state_key is None:
            raise invalid("The event is not an invite")
        if server_name_of(event.sender) != origin:
            raise invalid("The sender is not a user of the requesting server")
        if not is_valid_user_id(event.state_key) or server_name_of(event.state_key) != self.server_name:
            raise invalid("The invited user is not a user of this server")
        # 3. The stripped state: entries of the room, with its create event (room v12).
        if not isinstance(state, list):
            raise invalid("invite_room_state must be a list")
        limits = self._rooms.invite_limits
        if len(state) > limits.max_state_events:
            raise too_large(f"invite_room_state has {len(state)} entries (at most {limits.max_state_events})")
        entries = [e for e in state
                   if isinstance(e, dict) and isinstance(e.get("type"), str)
                   and isinstance(e.get("state_key"), str) and isinstance(e.get("content"), dict)]
        if version.room_id_is_create_hash and not any(
            e["type"] == "m.room.create" and self._same_room(e, room_id, version) for e in entries
        ):
            raise MatrixError(400, "M_MISSING_PARAM", "invite_room_state has no create event of this room")
        # 4. A room where the user is banned is refused.
        membership, _ = await self._rooms.get_membership(event.state_key, room_id)
        if membership == "ban":
            raise forbidden("The user is banned from this room")
        # 5. Countersign, store for the client (unless over a cap: the stripped state's
        # bytes, the invites pending from the origin), answer.
        signed = sign_event(pdu, version, self.server_name, self._key.signing_key)
        try:
            await self._rooms.receive_invite(event.state_key, room_id, signed, event_id, version.identifier, entries)
        except InviteRefused as e:
            raise (too_large(e.reason) if e.too_large else forbidden(e.reason)) from None
        return signed

    @staticmethod
    def _same_room(entry: dict[str, Any], room_id: str, version: RoomVersion) -> bool:
        if "room_id" in entry:
            return bool(entry["room_id"] == room_id)
        try:
            return "!" + compute_event_id(entry, version)[1:] == room_id
        except EventError:
            return False

    # ------------------------------------------------------------------ profile

    async def on_query_profile(self, request: web.Request) -> web.Response:
        user_id = request.query.get("user_id")
        field = request.query.get("field")
        if not user_id:
            raise MatrixError(400, "M_MISSING_PARAM", "user_id is required")
        if not is_valid_user_id(user_id) or server_name_of(user_id) != self.server_name:
            raise invalid("The user is not a user of this server")
        profile = await self._profiles(user_id) if self._profiles is not None else None
        if profile is None:
            raise not_found("Profile not found")
        if field is not None:
            if profile.get(field) is None:
                raise not_found("Profile field not found")
            return json_response({field: profile[field]})
        return json_response({k: v for k, v in profile.items() if v is not None})

