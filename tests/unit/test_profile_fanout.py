"""The join content a profile change sends (profile_fanout.member_content_with_profile)."""

from __future__ import annotations

from homeserver.client_api.profile_fanout import member_content_with_profile


def test_unchanged_profile_sends_nothing() -> None:
    current = {"membership": "join", "displayname": "a", "avatar_url": "mxc://x/y"}
    assert member_content_with_profile(current, {"displayname": "a", "avatar_url": "mxc://x/y"}) is None


def test_new_name_keeps_the_avatar_and_drops_other_keys() -> None:
    current = {"membership": "join", "displayname": "a", "avatar_url": "mxc://x/y", "reason": "hi"}
    assert member_content_with_profile(current, {"displayname": "b", "avatar_url": "mxc://x/y"}) == {
        "membership": "join", "displayname": "b", "avatar_url": "mxc://x/y"}


def test_unset_field_is_left_out() -> None:
    current = {"membership": "join", "displayname": "a", "avatar_url": "mxc://x/y"}
    assert member_content_with_profile(current, {"displayname": "a"}) == {"membership": "join", "displayname": "a"}
    assert member_content_with_profile({"membership": "join"}, {}) is None
