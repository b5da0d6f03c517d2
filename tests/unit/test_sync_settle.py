"""/sync's memberships settled against the token: a join committed between reading the
memberships and the positions is taken as a join in that response (homeserver/client_api/sync_settle.py)."""

from __future__ import annotations

from homeserver.client_api.sync_settle import settle_joins, settle_received
from homeserver.storage.timeline import MembershipChange


def change(room_id: str, membership: str, pos: int = 10) -> MembershipChange:
    return MembershipChange(room_id, f"$e{pos}", membership, pos)


def allow_all(room_id: str) -> bool:
    return True


def test_a_join_after_the_memberships_were_read_is_a_join() -> None:
    memberships = {"!dm": "invite", "!other": "join"}
    now = {"!dm": "join", "!other": "join"}
    assert settle_joins(memberships, {"!dm": change("!dm", "join")}, now, allow_all) == now


def test_a_join_to_a_room_not_in_the_memberships_is_a_join() -> None:
    assert settle_joins({}, {"!new": change("!new", "join")}, {"!new": "join"}, allow_all) == {"!new": "join"}


def test_a_room_not_joined_now_is_left_alone() -> None:
    # The join in the range was followed by a leave: the memberships read stand.
    memberships = {"!r": "invite"}
    assert settle_joins(memberships, {"!r": change("!r", "join")}, {"!r": "leave"}, allow_all) == memberships


def test_only_joins_are_settled() -> None:
    memberships = {"!a": "join", "!b": "leave"}
    latest = {"!a": change("!a", "leave"), "!b": change("!b", "invite")}
    assert settle_joins(memberships, latest, {"!a": "leave", "!b": "invite"}, allow_all) == memberships


def test_rooms_the_filter_leaves_out_stay_out() -> None:
    assert settle_joins({}, {"!x": change("!x", "join")}, {"!x": "join"}, lambda r: r != "!x") == {}


def test_a_received_invite_shown_by_the_memberships_read_again_is_an_invite() -> None:
    assert settle_received({}, {"!r": "invite"}, {"!r": "invite"}) == {"!r": "invite"}
    assert settle_received({"!r": "leave"}, {"!r": "knock"}, {"!r": "knock"}) == {"!r": "knock"}


def test_a_received_row_the_memberships_do_not_show_now_is_left_alone() -> None:
    # Joined meanwhile, rejected (a "leave" row), or not shown by the memberships read again.
    assert settle_received({"!a": "join"}, {"!a": "invite"}, {"!a": "invite"}) == {"!a": "join"}
    assert settle_received({}, {"!b": "leave"}, {"!b": "leave"}) == {}
    assert settle_received({"!c": "leave"}, {"!c": "invite"}, {"!c": "leave"}) == {"!c": "leave"}
