"""The createRoom plan (pure): event order, presets, initial_state precedence, power levels
per room version, and the requests it refuses."""

from __future__ import annotations

import pytest

from homeserver.events.versions import KNOWN_ROOM_VERSIONS
from homeserver.rooms.creation import plan_room
from homeserver.rooms.errors import BadRoomRequest

V10, V11, V12 = (KNOWN_ROOM_VERSIONS[v] for v in ("10", "11", "12"))
ALICE, BOB = "@alice:a.test", "@bob:b.test"


def keys(plan: object) -> list[tuple[str, str]]:
    return [(d.type, d.state_key) for d in plan.state]  # type: ignore[attr-defined]


def test_initial_state_replaces_preset_and_name_replaces_initial_state() -> None:
    plan = plan_room(V11, ALICE, preset="public_chat", name="N", initial_state=[
        {"type": "m.room.join_rules", "content": {"join_rule": "knock"}},
        {"type": "m.room.name", "state_key": "", "content": {"name": "ignored"}},
        {"type": "org.example", "state_key": "k", "content": {"x": 1}},
    ])
    assert keys(plan) == [
        ("m.room.power_levels", ""), ("m.room.history_visibility", ""), ("m.room.guest_access", ""),
        ("m.room.join_rules", ""), ("org.example", "k"), ("m.room.name", ""),
    ]
    assert plan.state[3].content == {"join_rule": "knock"}
    assert plan.state[-1].content == {"name": "N"}
    assert plan.state[0].content["invite"] == 50  # public rooms: inviting takes moderator power


def test_power_levels_per_version_and_override() -> None:
    v10 = plan_room(V10, ALICE, invite=[BOB], preset="trusted_private_chat",
                    power_level_content_override={"ban": 80, "users": {ALICE: 100, BOB: 60}})
    assert v10.create_content == {"room_version": "10", "creator": ALICE}
    assert v10.state[0].content["users"] == {ALICE: 100, BOB: 60}  # the override replaces users
    assert v10.state[0].content["ban"] == 80 and v10.state[0].content["invite"] == 0
    v12 = plan_room(V12, ALICE, invite=[BOB], preset="trusted_private_chat",
                    creation_content={"m.federate": False, "creator": "@x:y.test"})
    assert v12.create_content == {"room_version": "12", "m.federate": False, "additional_creators": [BOB]}
    assert v12.state[0].content["users"] == {}
    assert v12.state[0].content["events"]["m.room.tombstone"] == 150
    assert v12.invites == [BOB]


@pytest.mark.parametrize("kwargs", [
    {"preset": "party"},
    {"visibility": "hidden"},
    {"invite": ["not-a-user"]},
    {"invite": [ALICE]},
    {"initial_state": [{"type": "m.room.create", "content": {}}]},
    {"initial_state": [{"type": "x", "content": "nope"}]},
    {"creation_content": {"additional_creators": "bob"}},
])
def test_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadRoomRequest):
        plan_room(V12, ALICE, **kwargs)  # type: ignore[arg-type]
