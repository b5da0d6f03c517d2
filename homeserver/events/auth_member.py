"""The authorization rules for ``m.room.member`` events (rule 4 in the room v10 list;
rule 5 in rooms 1-5) in every room version: joins, invites (third-party ones too),
leaves and kicks, bans and knocks. Used by ``events/auth.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from homeserver.events.canonical import canonical_json, decode_b64
from homeserver.events.event import Event
from homeserver.events.identifiers import is_valid_user_id, server_name_of
from homeserver.events.power import (
    JOIN_RULES,
    AuthState,
    _membership,
    _named_level,
    get_power_level,
)
from homeserver.events.rulenum import reject


def _verify_third_party_signed(signed: Mapping[str, Any], tpi_event: Event) -> bool:
    """Rule 4.4.1.7: does any signature in ``signed`` verify with any public key of the
    m.room.third_party_invite event (``public_key`` and ``public_keys[].public_key``)?"""
    keys: list[str] = []
    content = tpi_event.content
    if isinstance(content.get("public_key"), str):
        keys.append(content["public_key"])
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        for entry in public_keys:
            if isinstance(entry, dict) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict) or not keys:
        return False
    message = canonical_json({k: v for k, v in signed.items() if k not in ("signatures",
                                                                           "unsigned")})
    verify_keys: list[VerifyKey] = []
    for key in keys:
        try:
            verify_keys.append(VerifyKey(decode_b64(key)))
        except (ValueError, TypeError):
            continue
    for server_sigs in signatures.values():
        if not isinstance(server_sigs, dict):
            continue
        for sig_b64 in server_sigs.values():
            if not isinstance(sig_b64, str):
                continue
            try:
                signature = decode_b64(sig_b64)
            except ValueError:
                continue
            for verify_key in verify_keys:
                try:
                    verify_key.verify(message, signature)
                    return True
                except (BadSignatureError, ValueError):
                    continue
    return False


def _check_third_party_invite(event: Event, auth_state: AuthState) -> None:
    """Rule 4.4.1: an invite carrying ``third_party_invite``. Returns on allow."""
    target = event.state_key
    assert target is not None
    # 4.4.1.1: target user is banned
    if _membership(auth_state, target) == "ban":
        raise reject(event, "4.4.1.1", "target user is banned")
    tpi = event.content["third_party_invite"]
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    # 4.4.1.2: third_party_invite has a signed property
    if not isinstance(signed, dict):
        raise reject(event, "4.4.1.2", "third_party_invite has no signed object")
    mxid, token = signed.get("mxid"), signed.get("token")
    # 4.4.1.3: signed has mxid and token
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise reject(event, "4.4.1.3", "signed has no mxid or token")
    # 4.4.1.4: mxid matches state_key
    if mxid != target:
        raise reject(event, "4.4.1.4", "signed.mxid does not match state_key")
    # 4.4.1.5: an m.room.third_party_invite event with state_key == token exists
    tpi_event = auth_state.get(("m.room.third_party_invite", token))
    if tpi_event is None:
        raise reject(event, "4.4.1.5", "no m.room.third_party_invite for the token")
    # 4.4.1.6: same sender as the m.room.third_party_invite
    if tpi_event.sender != event.sender:
        raise reject(event, "4.4.1.6", "sender differs from the third party invite's sender")
    # 4.4.1.7: a signature in signed matches a public key: allow
    if _verify_third_party_signed(signed, tpi_event):
        return
    # 4.4.1.8: otherwise, reject
    raise reject(event, "4.4.1.8", "no signature in signed matches the invite's public keys")


def _check_join(event: Event, auth_state: AuthState, create: Event) -> None:
    """Rule 4.3: membership ``join``. Returns on allow."""
    version = event.room_version
    target = event.state_key
    # 4.3.1: the first join of the creator, straight after the create event
    creator = (create.sender if version.create_uses_sender_as_creator
               else create.content.get("creator"))
    if event.prev_events == (create.event_id,) and target == creator:
        return
    # 4.3.2: sender must match state_key
    if event.sender != target:
        raise reject(event, "4.3.2", "sender does not match state_key")
    membership = _membership(auth_state, event.sender)
    # 4.3.3: sender is banned
    if membership == "ban":
        raise reject(event, "4.3.3", "sender is banned")
    join_rules = auth_state.get(JOIN_RULES)
    join_rule = None if join_rules is None else join_rules.content.get("join_rule")
    # 4.3.4: invite/knock rooms: allow if invited or joined (else on to 4.3.7)
    if join_rule == "invite" or (join_rule == "knock" and version.knocking):
        if membership in ("invite", "join"):
            return
    # 4.3.5: restricted rooms
    if (join_rule == "restricted" and version.restricted_joins) or (
        join_rule == "knock_restricted" and version.knock_restricted
    ):
        # 4.3.5.1: already joined or invited: allow
        if membership in ("join", "invite"):
            return
        # 4.3.5.2: the authorising user must be joined and able to invite
        via = event.content.get("join_authorised_via_users_server")
        if not isinstance(via, str):
            raise reject(event, "4.3.5.2", "no join_authorised_via_users_server")
        if _membership(auth_state, via) != "join":
            raise reject(event, "4.3.5.2", "authorising user is not joined")
        if get_power_level(via, auth_state) < _named_level(auth_state, "invite"):
            raise reject(event, "4.3.5.2", "authorising user cannot invite")
        # 4.3.5.3: otherwise, allow
        return
    # 4.3.6: public rooms: allow
    if join_rule == "public":
        return
    # 4.3.7: otherwise, reject
    raise reject(event, "4.3.7", f"cannot join ({membership!r}, join_rule {join_rule!r})")


def check_member(event: Event, auth_state: AuthState, create: Event) -> None:
    """Rule 4: m.room.member events. Returns on allow, raises on reject."""
    version = event.room_version
    # 4.1: state_key and content.membership are present
    membership = event.content.get("membership")
    if event.state_key is None or "membership" not in event.content:
        raise reject(event, "4.1", "member event without state_key or membership")
    target = event.state_key
    # 4.2.1: signed by the server of join_authorised_via_users_server. The caller verified
    # signatures (signing.verify_event_signatures requires this server); here we check
    # the key is a user ID and that its server's signature is present.
    if version.restricted_joins and "join_authorised_via_users_server" in event.content:
        via = event.content["join_authorised_via_users_server"]
        if not is_valid_user_id(via):
            raise reject(event, "4.2.1", "join_authorised_via_users_server is not a user ID")
        sigs = event.pdu.get("signatures")
        if not isinstance(sigs, dict) or not sigs.get(server_name_of(via)):
            raise reject(event, "4.2.1", "not signed by the authorising user's server")

    sender_pl = get_power_level(event.sender, auth_state)
    sender_membership = _membership(auth_state, event.sender)
    target_membership = _membership(auth_state, target)

    if membership == "join":
        _check_join(event, auth_state, create)
        return

    if membership == "invite":
        # 4.4.1: third party invites
        if "third_party_invite" in event.content:
            _check_third_party_invite(event, auth_state)
            return
        # 4.4.2: sender is joined
        if sender_membership != "join":
            raise reject(event, "4.4.2", "sender is not joined")
        # 4.4.3: target is joined or banned
        if target_membership in ("join", "ban"):
            raise reject(event, "4.4.3", f"target is already {target_membership}")
        # 4.4.4: sender power >= invite level: allow
        if sender_pl >= _named_level(auth_state, "invite"):
            return
        # 4.4.5: otherwise, reject
        raise reject(event, "4.4.5", "sender power level is below the invite level")

    if membership == "leave":
        # 4.5.1: leaving oneself: allowed from invite, join or (room 7+) knock
        if event.sender == target:
            if sender_membership in ("invite", "join") or (
                sender_membership == "knock" and version.knocking
            ):
                return
            raise reject(event, "4.5.1", f"cannot leave from membership {sender_membership!r}")
        # 4.5.2: sender is joined
        if sender_membership != "join":
            raise reject(event, "4.5.2", "sender is not joined")
        target_pl = get_power_level(target, auth_state)
        # 4.5.3: unbanning needs the ban level
        if target_membership == "ban" and sender_pl < _named_level(auth_state, "ban"):
            raise reject(event, "4.5.3", "sender power level is below the ban level")
        # 4.5.4: kick level and outranking the target: allow
        if sender_pl >= _named_level(auth_state, "kick") and target_pl < sender_pl:
            return
        # 4.5.5: otherwise, reject
        raise reject(event, "4.5.5", "sender cannot kick the target")

    if membership == "ban":
        # 4.6.1: sender is joined
        if sender_membership != "join":
            raise reject(event, "4.6.1", "sender is not joined")
        # 4.6.2: ban level and outranking the target: allow
        target_pl = get_power_level(target, auth_state)
        if sender_pl >= _named_level(auth_state, "ban") and target_pl < sender_pl:
            return
        # 4.6.3: otherwise, reject
        raise reject(event, "4.6.3", "sender cannot ban the target")

    if membership == "knock" and version.knocking:
        join_rules = auth_state.get(JOIN_RULES)
        join_rule = None if join_rules is None else join_rules.content.get("join_rule")
        # 4.7.1: join rule is knock or knock_restricted
        if not (join_rule == "knock" or (join_rule == "knock_restricted"
                                         and version.knock_restricted)):
            raise reject(event, "4.7.1", f"cannot knock with join_rule {join_rule!r}")
        # 4.7.2: sender must match state_key
        if event.sender != target:
            raise reject(event, "4.7.2", "sender does not match state_key")
        # 4.7.3: not banned, invited or joined: allow
        if sender_membership not in ("ban", "invite", "join"):
            return
        # 4.7.4: otherwise, reject
        raise reject(event, "4.7.4", f"cannot knock from membership {sender_membership!r}")

    # 4.8: unknown membership
    raise reject(event, "4.8", f"unknown membership {membership!r}")
