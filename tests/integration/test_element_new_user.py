"""A new Element user's first steps with Element's own SDK (matrix-js-sdk 43,
tests/e2e_js/new_user.mjs), each user on their own server, on both engines: profiles with an
uploaded avatar that the other side resolves and thumbnails through authenticated media; a named
room whose invite shows its name, avatar and the inviter's name; member names and the room
summary; a direct chat named by its summary's heroes; a mention's notification and highlight
counts, cleared by a read receipt; a thread, its unread counts and a threaded receipt; an edit;
presence with a status; a tag; a search; typing, read receipts, a reaction, a redaction, the
profile, the user directory, the public room directory over federation and a join by alias, a
space whose rooms come over federation, a muted room (a push rule); the initial sync of a new
device; and, last, a room upgrade B follows and A ignoring B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homeserver.server import RunningServer
from tests.element import assert_passed, ensure_installed, explain, step
from tests.integration.test_element_e2ee import scenario


@pytest.fixture(scope="session")
def node() -> Path:
    return ensure_installed()


def avatar_url(result: dict[str, Any]) -> str:
    url: str = step(result, "b looks up a's profile")["avatar_url"]
    assert url.startswith("mxc://"), url
    return url


async def test_new_element_user(node: Path, pair: tuple[RunningServer, RunningServer]) -> None:
    result = await scenario(node, pair, "new_user")
    failed = [s for s in result["steps"] if not s["ok"]]
    assert not failed and not result["unhandled"], explain(result)
    invite = step(result, "b sees the invite with the room name and a's name")
    assert (invite["room_name"], invite["inviter_name"]) == ("Project Kestrel", "Alice Newuser")
    seen = step(result, "both see the display names and the summary")
    assert (seen["a_sees_b"], seen["b_sees_a"], seen["b_joined_count"]) == ("Bob Newuser", "Alice Newuser", 2)
    direct = step(result, "b joins the direct chat: the summary's heroes name it")
    assert (direct["a_name"], direct["b_name"]) == ("Bob Newuser", "Alice Newuser")
    avatar = step(result, "b resolves a's avatar through authenticated media")
    assert avatar["download_path"].startswith("/_matrix/client/v1/media/download/"), avatar
    assert avatar["thumbnail"]["width"] == avatar["thumbnail"]["height"] == 32, avatar
    mention = step(result, "b mentions a: a has notification and highlight counts")
    assert mention["total"] >= 1 and mention["highlight"] >= 1, mention
    assert step(result, "a's read receipt clears the counts") == {
        "name": "a's read receipt clears the counts", "ok": True, "total": 0, "highlight": 0}
    assert step(result, "b replies in a thread: a's SDK shows it")["last_reply"] == "kestrel in the thread"
    thread_counts = step(result, "a's thread has unread counts, and a threaded receipt clears them")
    assert thread_counts["before"]["total"] >= 1 and thread_counts["after"]["total"] == 0, thread_counts
    assert step(result, "b edits a message: a sees the new content")["body"] == "kestrel final draft"
    assert step(result, "a's presence and status reach b")["status"] == "flying kestrels"
    assert "m.favourite" in step(result, "a tags the room as a favourite")["tags"]
    assert any("kestrel report" in b for b in step(result, "a searches and finds b's message")["bodies"])
    assert step(result, "b's invite shows the room avatar")["url"] == avatar_url(result)
    assert step(result, "b sees a typing")["typing"]
    assert step(result, "a reacts: b sees the reaction")["keys"] == [["\N{THUMBS UP SIGN}", 1]]
    assert step(result, "b redacts a message: a sees it redacted")["body"] is None
    assert step(result, "b looks up a's profile")["displayname"] == "Alice Newuser"
    assert result["users"][0] in step(result, "b finds a in the user directory")["ids"]
    lobby = step(result, "b finds a's public room over federation and joins it by alias")
    assert lobby["room_name"] == "Kestrel Lobby" and lobby["alias"].startswith("#kestrel-lobby-"), lobby
    space = step(result, "b joins a's space and sees its rooms, one known only to a's server")
    assert space["rooms"] == ["Kestrel Annex", "Kestrel Lobby", "Kestrel Space"], space
    assert step(result, "a mutes the direct chat: b's message there does not notify")["total"] == 0
    step(result, "b sees a's read receipt")
    step(result, "a's media config")
    upgraded = step(result, "a upgrades the lobby: b follows the tombstone to the new room")
    assert upgraded["version"] == "12" and upgraded["new_name"] == "Kestrel Lobby", upgraded
    assert step(result, "a ignores b: b's next message does not reach a's timeline")["hidden"]
    again = step(result, "a's new device: the initial sync shows names, edit, thread, tag and no unread")
    assert again["edited_body"] == "kestrel final draft" and again["thread_last"] == "kestrel in the thread", again
    assert not [e for e in result["http_errors"] if "/media/" in e[1] or "/presence/" in e[1]], result["http_errors"]
    assert_passed(result)
