"""The joining server's side of the membership handshakes with other servers.

* Join (spec: server-server "Joining Rooms"): ``make_join`` offering every room version
  we implement, checks of the template, our signature, ``send_join`` (v2), then the
  returned state and auth chain are verified event by event (format, signatures through
  the keyring, content hashes, the auth rules against each event's own auth events) and
  stored as outliers; the join is checked against the returned state and persisted with
  it as the state before it, and not queued for anyone: the resident announces it to the
  room's other servers, as the spec asks of it. From then on the room is ours like any other.
* Leave of a room we are not in (rejecting a remote invite): ``make_leave``/``send_leave``.
* Knock (spec: server-server "Knocking upon a room"): ``make_knock``/``send_knock`` like
  a leave; the resident's ``knock_room_state`` (stripped state, bounded) comes back for
  the client. The knock is not stored as a room event here: we hold no state of the room.
* Invite of another server's user: ``PUT /v2/invite`` first; the event comes back with
  the invitee's server's signature, which is checked before the event is persisted.

Every request goes through the one federation client, with its timeouts; resident
servers are tried in turn and a refusal by the auth rules stops the attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from signedjson.sign import SignatureVerifyException, verify_signed_json

from homeserver.crypto.keyring import KeyNotFoundError, KeyRing
from homeserver.events.auth import check_auth_rules
from homeserver.events.errors import AuthError, EventError, UnsupportedRoomVersion
from homeserver.events.event import Event, StateKey
from homeserver.events.hashes import compute_event_id
from homeserver.events.identifiers import server_name_of
from homeserver.events.redaction import redact
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.builder import CREATE, EventBuilder
from homeserver.rooms.checks.receipt import Dropped
from homeserver.rooms.errors import NotAllowed, RemoteJoinFailed, RoomNotFound, UnsupportedVersion
from homeserver.rooms.fetcher import RemoteFetcher
from homeserver.rooms.store import RoomMembershipStore

log = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
MAX_JOIN_CANDIDATES = 5
MAX_KNOCK_STATE = 50


def _q(value: str) -> str:
    return quote(value, safe="")


def check_template(template: Any, room_id: str, user_id: str, membership: str) -> dict[str, Any]:
    """The spec's checks of a make_join/make_leave template; ValueError when malformed."""
    if not isinstance(template, dict):
        raise ValueError("the template is not an object")
    content = template.get("content")
    if (
        template.get("room_id") != room_id
        or template.get("sender") != user_id
        or template.get("state_key") != user_id
        or template.get("type") != "m.room.member"
        or not isinstance(content, dict)
        or content.get("membership") != membership
    ):
        raise ValueError("the template does not match the request")
    if not isinstance(template.get("prev_events"), list) or not isinstance(template.get("auth_events"), list):
        raise ValueError("the template has no prev_events or auth_events")
    if not isinstance(template.get("depth"), int):
        raise ValueError("the template has no depth")
    return template


class RemoteMembership:
    def __init__(
        self,
        server_name: str,
        client: FederationClient,
        keyring: KeyRing,
        fetcher: RemoteFetcher,
        builder: EventBuilder,
        memberships: RoomMembershipStore,
    ) -> None:
        self.server_name = server_name
        self._client = client
        self._keyring = keyring
        self.fetcher = fetcher
        self.checker = fetcher.checker
        self._builder = builder
        self._store = builder.store
        self._persister = builder.persister
        self._memberships = memberships

    def candidates(self, servers: Iterable[str]) -> list[str]:
        return [s for s in dict.fromkeys(servers) if s and s != self.server_name][:MAX_JOIN_CANDIDATES]

    # ------------------------------------------------------------------ join

    async def join(self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]) -> Event:
        """Join ``room_id`` through the first of ``servers`` that completes the handshake."""
        candidates = self.candidates(servers)
        if not candidates:
            raise RoomNotFound(room_id, "no server to join the room through")
        failures: list[str] = []
        for server in candidates:
            try:
                return await self._join_via(server, user_id, room_id, content)
            except FederationRequestError as e:
                self._raise_refusal(e, room_id)
                failures.append(f"{server}: {e}")
            except RemoteJoinFailed as e:
                failures.append(f"{server}: {e.reason}")
            log.info("remote join attempt failed", extra={"room_id": room_id, "server": server,
                                                          "reason": failures[-1][:300]})
        raise RemoteJoinFailed("; ".join(failures))

    @staticmethod
    def _raise_refusal(e: FederationRequestError, room_id: str) -> None:
        """Refusals that another resident would repeat end the attempt."""
        if e.status == 403:
            raise NotAllowed(f"{e.destination} refused: {e.body.get('error') if isinstance(e.body, dict) else e}")
        if e.errcode == "M_INCOMPATIBLE_ROOM_VERSION":
            version = e.body.get("room_version") if isinstance(e.body, dict) else None
            raise UnsupportedVersion(version, "the room's version is not one we implement")

    async def _make_membership(
        self, server: str, user_id: str, room_id: str, membership: str
    ) -> tuple[RoomVersion, dict[str, Any]]:
        """``make_join``/``make_knock`` offering every version we implement: the room's
        version and the checked template of the membership we asked for."""
        reply = await self._client.get_json(
            server, f"{V1}/make_{membership}/{_q(room_id)}/{_q(user_id)}", query={"ver": list(KNOWN_ROOM_VERSIONS)},
            exact_numbers=True,
        )
        if not isinstance(reply, dict):
            raise RemoteJoinFailed(f"make_{membership} reply is not an object")
        try:
            version = get_room_version(reply.get("room_version"))
        except UnsupportedRoomVersion:
            raise UnsupportedVersion(reply.get("room_version")) from None
        try:
            template = check_template(reply.get("event"), room_id, user_id, membership)
        except ValueError as e:
            raise RemoteJoinFailed(f"bad make_{membership} template: {e}") from None
        return version, template

    async def _join_via(self, server: str, user_id: str, room_id: str, content: Mapping[str, Any]) -> Event:
        # 1-2. make_join, offering every version we implement; the template must be the
        # join we asked for.
        version, template = await self._make_membership(server, user_id, room_id, "join")
        # 3. Fill in, sign.
        join = self._fill(template, content, version)
        # 4. send_join (v2), full state.
        resp = await self._client.put_json(
            server, f"{V2}/send_join/{_q(room_id)}/{_q(join.event_id)}", join.pdu, exact_numbers=True
        )
        if not isinstance(resp, dict) or not isinstance(resp.get("state"), list) \
                or not isinstance(resp.get("auth_chain"), list):
            raise RemoteJoinFailed("send_join reply has no state or auth_chain")
        if resp.get("members_omitted") is True:
            raise RemoteJoinFailed("send_join omitted members we did not agree to omit")
        signed = resp.get("event")
        if isinstance(signed, dict):
            # The resident's copy (signed by it too, for restricted joins): same event.
            try:
                if compute_event_id(signed, version) == join.event_id:
                    join = await self.checker.check(signed, version, join.event_id)
            except (Dropped, EventError):
                raise RemoteJoinFailed("the resident's copy of the join does not verify") from None
        # 5. Verify the state and auth chain; 6. persist them and the join.
        await self._take_state(join, resp["state"], resp["auth_chain"])
        return join

    def _fill(self, template: dict[str, Any], content: Mapping[str, Any], version: RoomVersion) -> Event:
        pdu = {k: v for k, v in template.items() if k not in ("event_id", "signatures", "hashes", "unsigned")}
        merged = {**dict(content), **template["content"]}
        merged["membership"] = template["content"]["membership"]
        pdu["content"] = merged
        pdu["origin"] = self.server_name
        pdu["origin_server_ts"] = self._builder.now_ms()
        return self._builder.sign(pdu, version)

    async def _take_state(self, join: Event, state_pdus: list[Any], chain_pdus: list[Any]) -> None:
        room_id, version = join.room_id, join.room_version
        good = await self.verify_events(room_id, version, [*chain_pdus, *state_pdus])
        state: dict[StateKey, str] = {}
        for pdu in state_pdus:
            try:
                event_id = compute_event_id(pdu, version) if isinstance(pdu, dict) else None
            except EventError:
                event_id = None
            event = good.get(event_id or "")
            if event is not None and event.is_state:
                state[event.state_tuple] = event.event_id
        if CREATE not in state:
            raise RemoteJoinFailed("the returned state has no valid create event")
        auth_state = {k: good[eid] for k, eid in state.items()}
        try:
            check_auth_rules(join, auth_state)
        except AuthError as e:
            raise RemoteJoinFailed(f"our join does not pass the returned state: {e}") from None
        await self._persister.persist_outliers(
            [e for e in good.values() if e.event_id != join.event_id]
        )
        async with self._persister.room_lock(room_id):
            # Not queued: the resident that accepted it through send_join announces it to
            # the room's other servers (the spec's rule; ours and Synapse do), so each
            # server receives it once.
            await self._builder.persist_local(join, state, send=False)

    async def verify_events(self, room_id: str, version: RoomVersion, pdus: Sequence[Any]) -> dict[str, Event]:
        """The events of ``pdus`` that pass the checks on receipt (format, signatures,
        hashes) and the auth rules against their own auth events; the others are left out."""
        return await self.fetcher.verify_events(room_id, version, pdus)

    # ------------------------------------------------------------------ leave (reject)

    async def leave(self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]) -> Event:
        """Leave a room we are not in (reject an invite) through a resident server."""
        failures: list[str] = []
        for server in self.candidates(servers):
            try:
                reply = await self._client.get_json(server, f"{V1}/make_leave/{_q(room_id)}/{_q(user_id)}",
                                                    exact_numbers=True)
                if not isinstance(reply, dict):
                    raise RemoteJoinFailed("make_leave reply is not an object")
                try:
                    version = get_room_version(reply.get("room_version"))
                    template = check_template(reply.get("event"), room_id, user_id, "leave")
                except (UnsupportedRoomVersion, ValueError) as e:
                    raise RemoteJoinFailed(f"bad make_leave reply: {e}") from None
                leave = self._fill(template, content, version)
                await self._client.put_json(
                    server, f"{V2}/send_leave/{_q(room_id)}/{_q(leave.event_id)}", leave.pdu
                )
                return leave
            except FederationRequestError as e:
                if e.status == 403:
                    raise NotAllowed(f"{server} refused the leave") from None
                failures.append(f"{server}: {e}")
            except RemoteJoinFailed as e:
                failures.append(f"{server}: {e.reason}")
        raise RemoteJoinFailed("could not leave through any server: " + "; ".join(failures))

    # ------------------------------------------------------------------ knock

    async def knock(
        self, user_id: str, room_id: str, servers: Sequence[str], content: Mapping[str, Any]
    ) -> tuple[Event, list[dict[str, Any]]]:
        """Knock on a room we are not in through the first of ``servers`` that completes
        the handshake; return the knock and the stripped state the resident answered."""
        candidates = self.candidates(servers)
        if not candidates:
            raise RoomNotFound(room_id, "no server to knock through")
        failures: list[str] = []
        unknown = 0
        for server in candidates:
            try:
                return await self._knock_via(server, user_id, room_id, content)
            except FederationRequestError as e:
                self._raise_refusal(e, room_id)
                unknown += e.status == 404
                failures.append(f"{server}: {e}")
            except RemoteJoinFailed as e:
                failures.append(f"{server}: {e.reason}")
            log.info("remote knock attempt failed", extra={"room_id": room_id, "server": server,
                                                           "reason": failures[-1][:300]})
        if unknown == len(candidates):
            raise RoomNotFound(room_id, "no server we asked knows the room")
        raise RemoteJoinFailed("could not knock through any server: " + "; ".join(failures))

    async def _knock_via(
        self, server: str, user_id: str, room_id: str, content: Mapping[str, Any]
    ) -> tuple[Event, list[dict[str, Any]]]:
        version, template = await self._make_membership(server, user_id, room_id, "knock")
        if not version.knocking:
            raise UnsupportedVersion(version.identifier, "the room's version has no knocking")
        knock = self._fill(template, content, version)
        resp = await self._client.put_json(
            server, f"{V1}/send_knock/{_q(room_id)}/{_q(knock.event_id)}", knock.pdu, exact_numbers=True
        )
        state = resp.get("knock_room_state") if isinstance(resp, dict) else None
        if not isinstance(state, list):
            raise RemoteJoinFailed("send_knock reply has no knock_room_state")
        stripped = [
            {k: e[k] for k in ("type", "state_key", "content", "sender") if k in e}
            for e in state[:MAX_KNOCK_STATE]
            if isinstance(e, dict) and isinstance(e.get("type"), str)
            and isinstance(e.get("state_key"), str) and isinstance(e.get("content"), dict)
        ]
        return knock, stripped

    # ------------------------------------------------------------------ invite

    async def invite(self, event: Event, invite_room_state: list[dict[str, Any]]) -> Event:
        """Have the invitee's server sign ``event``; return the event with both signatures."""
        assert event.state_key is not None
        target = server_name_of(event.state_key)
        reply = await self._client.put_json(
            target,
            f"{V2}/invite/{_q(event.room_id)}/{_q(event.event_id)}",
            {"room_version": event.room_version.identifier, "event": event.pdu,
             "invite_room_state": invite_room_state},
            exact_numbers=True,
        )
        signed = reply.get("event") if isinstance(reply, dict) else None
        if not isinstance(signed, dict):
            raise RemoteJoinFailed(f"{target} returned no invite event")
        try:
            same = compute_event_id(signed, event.room_version) == event.event_id
        except EventError:
            same = False
        if not same:
            raise RemoteJoinFailed(f"{target} changed the invite event")
        await self._check_signature(signed, event.room_version, target)
        # Keep our event; add the invitee's server's signatures.
        pdu = dict(event.pdu)
        sigs = {k: dict(v) for k, v in pdu["signatures"].items()}
        sigs[target] = dict(signed["signatures"][target])
        pdu["signatures"] = sigs
        return Event.from_pdu(pdu, event.room_version, event_id=event.event_id)

    async def _check_signature(self, pdu: dict[str, Any], version: RoomVersion, server: str) -> None:
        sigs = pdu.get("signatures")
        theirs = sigs.get(server) if isinstance(sigs, dict) else None
        if not isinstance(theirs, dict) or not theirs:
            raise RemoteJoinFailed(f"{server} did not sign the invite")
        redacted = redact(pdu, version)
        redacted.pop("unsigned", None)
        redacted["signatures"] = {server: theirs}
        for key_id in theirs:
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                continue
            try:
                key = await self._keyring.get_verify_key(server, key_id)
                verify_signed_json(redacted, server, key)
                return
            except (KeyNotFoundError, SignatureVerifyException):
                continue
        raise RemoteJoinFailed(f"{server}'s signature on the invite does not verify")
