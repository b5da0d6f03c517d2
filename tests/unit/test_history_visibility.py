"""The history visibility rules as pure functions: users (the client-server spec's
"Server behaviour" rules 1-5) and servers."""

from __future__ import annotations

import pytest

from homeserver.rooms.visibility import server_may_see, user_may_see, visibility_value


@pytest.mark.parametrize(
    ("visibility", "membership", "joined_later", "visible"),
    [
        ("world_readable", None, False, True),
        ("world_readable", "leave", False, True),
        ("joined", "join", False, True),
        ("joined", "invite", True, False),
        ("joined", None, True, False),
        ("invited", "invite", False, True),
        ("invited", "join", False, True),
        ("invited", None, True, False),
        ("invited", "leave", True, False),
        ("shared", None, True, True),
        ("shared", None, False, False),
        ("shared", "invite", False, False),
        ("shared", "join", False, True),
    ],
)
def test_user_rules(visibility: str, membership: str | None, joined_later: bool, visible: bool) -> None:
    assert user_may_see(visibility, membership, joined_later) is visible


@pytest.mark.parametrize(
    ("visibility", "memberships", "in_room", "visible"),
    [
        ("world_readable", [], False, True),
        ("shared", [], True, True),
        ("shared", [], False, False),
        ("shared", ["join"], False, True),
        ("invited", ["invite"], True, True),
        ("invited", ["leave", "join"], False, True),
        ("invited", [], True, False),
        ("joined", ["invite"], True, False),
        ("joined", ["leave", "join"], True, True),
        ("joined", [], True, False),
    ],
)
def test_server_rules(visibility: str, memberships: list[str], in_room: bool, visible: bool) -> None:
    assert server_may_see(visibility, memberships, in_room) is visible


def test_unknown_or_missing_values_count_as_shared() -> None:
    assert visibility_value({"history_visibility": "joined"}) == "joined"
    assert visibility_value({"history_visibility": "nonsense"}) == "shared"
    assert visibility_value({}) == "shared"
    assert visibility_value({"history_visibility": 3}) == "shared"
