"""Server-side key backups (both engines, a real server, real HTTP): versions created,
read, updated and deleted (numbers never reused); keys stored, read and deleted at the three
levels with their etag and count; a session's key replaced only by a better one; keys
written only to the current version (403 M_WRONG_ROOM_KEYS_VERSION with current_version);
bad input refused with nothing stored; another user's backup out of reach."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

from homeserver.client_api.key_backup import MAX_AUTH_DATA_BYTES, MAX_SESSION_DATA_BYTES
from homeserver.server import RunningServer
from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
ROOM = "!room:example.org"
OTHER_ROOM = "!other:example.org"
SESSION = "sess/ion+1"  # base64 may hold "/" and "+": sent escaped


def key(fmi: int, fc: int = 0, verified: bool = False, data: str = "x") -> dict[str, Any]:
    return {"first_message_index": fmi, "forwarded_count": fc, "is_verified": verified,
            "session_data": {"ciphertext": data, "ephemeral": "e", "mac": "m"}}


def keys_path(room: str | None = None, session: str | None = None, version: str | None = "1") -> str:
    path = f"{V3}/room_keys/keys"
    if room is not None:
        path += "/" + quote(room, safe="")
        if session is not None:
            path += "/" + quote(session, safe="")
    return path + (f"?version={version}" if version is not None else "")


class Client:
    def __init__(self, server: RunningServer, token: str) -> None:
        self.server, self.token = server, token

    async def __call__(self, method: str, path: str, body: Any = None, data: bytes | None = None) -> tuple[int, Any]:
        return await raw(self.server, method, path, token=self.token, json=body, data=data)


async def test_key_backup_lifecycle(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as a, nio_user(server, "bob") as b:
        alice, bob = Client(server, a.access_token), Client(server, b.access_token)
        status, body = await alice("GET", f"{V3}/room_keys/version")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await alice("PUT", keys_path(ROOM, SESSION), key(0))
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

        # Create version 1.
        auth_data = {"public_key": "abc", "signatures": {}}
        status, body = await alice("POST", f"{V3}/room_keys/version", {"algorithm": ALGORITHM, "auth_data": auth_data})
        assert (status, body) == (200, {"version": "1"})
        status, v1 = await alice("GET", f"{V3}/room_keys/version")
        assert status == 200 and v1["version"] == "1" and v1["count"] == 0 and v1["algorithm"] == ALGORITHM
        assert v1["auth_data"] == auth_data and isinstance(v1["etag"], str)
        assert (await alice("GET", f"{V3}/room_keys/version/1")) == (200, v1)

        # Keys at the three levels; each answer has the etag and count.
        status, r1 = await alice("PUT", keys_path(), {"rooms": {ROOM: {"sessions": {SESSION: key(5, 1)}}}})
        assert status == 200 and r1["count"] == 1 and r1["etag"] != v1["etag"]
        status, r2 = await alice("PUT", keys_path(ROOM), {"sessions": {"s2": key(0)}})
        assert status == 200 and r2["count"] == 2 and r2["etag"] != r1["etag"]
        status, r3 = await alice("PUT", keys_path(OTHER_ROOM, "s3"), key(0))
        assert status == 200 and r3["count"] == 3 and r3["etag"] != r2["etag"]
        status, got = await alice("GET", keys_path())
        assert status == 200 and got == {"rooms": {
            ROOM: {"sessions": {SESSION: key(5, 1), "s2": key(0)}}, OTHER_ROOM: {"sessions": {"s3": key(0)}}}}
        assert (await alice("GET", keys_path(ROOM))) == (200, {"sessions": {SESSION: key(5, 1), "s2": key(0)}})
        assert (await alice("GET", keys_path(ROOM, SESSION))) == (200, key(5, 1))
        assert (await alice("GET", keys_path("!empty:example.org"))) == (200, {"sessions": {}})
        status, body = await alice("GET", keys_path(ROOM, "nosuch"))
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, v = await alice("GET", f"{V3}/room_keys/version")
        assert v["count"] == 3 and v["etag"] == r3["etag"]

        # The replacement rules, for one session (stored: unverified, index 5, forwarded 1).
        etag = r3["etag"]

        async def upload(new: dict[str, Any]) -> tuple[dict[str, Any], bool]:
            nonlocal etag
            status, body = await alice("PUT", keys_path(ROOM, SESSION), new)
            assert status == 200 and body["count"] == 3, body
            changed = body["etag"] != etag
            etag = body["etag"]
            return (await alice("GET", keys_path(ROOM, SESSION)))[1], changed

        assert await upload(key(6, 0, data="worse index")) == (key(5, 1), False)
        assert await upload(key(5, 2, data="worse forwards")) == (key(5, 1), False)
        assert await upload(key(5, 1, data="same")) == (key(5, 1), False)
        assert await upload(key(5, 0, data="fewer forwards")) == (key(5, 0, data="fewer forwards"), True)
        assert await upload(key(3, 9, data="lower index")) == (key(3, 9, data="lower index"), True)
        assert await upload(key(10, 10, True, "verified")) == (key(10, 10, True, "verified"), True)
        assert await upload(key(0, 0, False, "unverified")) == (key(10, 10, True, "verified"), False)
        assert await upload(key(9, 10, True, "verified lower")) == (key(9, 10, True, "verified lower"), True)

        # Update the version's auth_data; its algorithm cannot change.
        new_auth = {"public_key": "def"}
        status, body = await alice("PUT", f"{V3}/room_keys/version/1", {"algorithm": ALGORITHM, "auth_data": new_auth,
                                                                        "version": "1"})
        assert (status, body) == (200, {})
        assert (await alice("GET", f"{V3}/room_keys/version/1"))[1]["auth_data"] == new_auth
        for payload, expected in (
            ({"algorithm": "m.other", "auth_data": {}}, (400, "M_INVALID_PARAM")),
            ({"algorithm": ALGORITHM, "auth_data": {}, "version": "2"}, (400, "M_INVALID_PARAM")),
            ({"algorithm": ALGORITHM}, (400, "M_BAD_JSON")),
        ):
            status, body = await alice("PUT", f"{V3}/room_keys/version/1", payload)
            assert (status, body["errcode"]) == expected, body
        status, body = await alice("PUT", f"{V3}/room_keys/version/7", {"algorithm": ALGORITHM, "auth_data": {}})
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

        # A second version becomes current: writes to version 1 are refused, reads still work.
        status, body = await alice("POST", f"{V3}/room_keys/version", {"algorithm": ALGORITHM, "auth_data": {}})
        assert (status, body) == (200, {"version": "2"})
        status, body = await alice("PUT", keys_path(ROOM, "s9"), key(0))
        assert (status, body["errcode"], body["current_version"]) == (403, "M_WRONG_ROOM_KEYS_VERSION", "2")
        status, body = await alice("PUT", keys_path(ROOM, "s9", version="99"), key(0))
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await alice("PUT", keys_path(ROOM, "s9", version="not-a-number"), key(0))
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await alice("PUT", keys_path(ROOM, "s9", version=None), key(0))
        assert (status, body["errcode"]) == (400, "M_MISSING_PARAM")
        assert (await alice("GET", keys_path(ROOM, SESSION)))[0] == 200
        status, v2 = await alice("GET", f"{V3}/room_keys/version")
        assert v2["version"] == "2" and v2["count"] == 0

        # Deleting keys: one session, one room, all; the etag changes and the count falls.
        status, d1 = await alice("DELETE", keys_path(ROOM, SESSION))
        assert status == 200 and d1["count"] == 2 and d1["etag"] != etag
        status, d2 = await alice("DELETE", keys_path(ROOM))
        assert status == 200 and d2["count"] == 1 and d2["etag"] != d1["etag"]
        status, d3 = await alice("DELETE", keys_path())
        assert status == 200 and d3["count"] == 0
        assert (await alice("GET", keys_path())) == (200, {"rooms": {}})
        status, body = await alice("DELETE", keys_path(version="99"))
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

        # Deleting version 2 makes version 1 current again; numbers are never reused.
        assert (await alice("DELETE", f"{V3}/room_keys/version/2")) == (200, {})
        status, body = await alice("DELETE", f"{V3}/room_keys/version/2")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await alice("GET", f"{V3}/room_keys/version/2")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        assert (await alice("GET", f"{V3}/room_keys/version"))[1]["version"] == "1"
        status, body = await alice("GET", keys_path(version="2"))
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        assert (await alice("POST", f"{V3}/room_keys/version", {"algorithm": ALGORITHM, "auth_data": {}}))[1] == {
            "version": "3"}

        # Another user sees none of it, and cannot touch it.
        status, body = await bob("GET", f"{V3}/room_keys/version")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await bob("GET", keys_path(version="3"))
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        status, body = await bob("DELETE", f"{V3}/room_keys/version/3")
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
        assert (await alice("GET", f"{V3}/room_keys/version"))[1]["version"] == "3"


async def test_key_backup_bad_input(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as a:
        alice = Client(server, a.access_token)
        for payload, expected in (
            ({}, (400, "M_BAD_JSON")),
            ({"algorithm": 5, "auth_data": {}}, (400, "M_BAD_JSON")),
            ({"algorithm": "", "auth_data": {}}, (400, "M_BAD_JSON")),
            ({"algorithm": ALGORITHM, "auth_data": "x"}, (400, "M_BAD_JSON")),
            ({"algorithm": ALGORITHM, "auth_data": {"k": "x" * MAX_AUTH_DATA_BYTES}}, (413, "M_TOO_LARGE")),
        ):
            status, body = await alice("POST", f"{V3}/room_keys/version", payload)
            assert (status, body["errcode"]) == expected, body
        status, body = await alice("POST", f"{V3}/room_keys/version", data=b"nope")
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await alice("GET", f"{V3}/room_keys/version")
        assert status == 404  # nothing was created
        status, _ = await alice("POST", f"{V3}/room_keys/version", {"algorithm": ALGORITHM, "auth_data": {}})
        assert status == 200
        status, r = await alice("PUT", keys_path(ROOM, "kept"), key(1))
        assert status == 200

        bad_keys: list[tuple[str, Any, tuple[int, str]]] = [
            (keys_path(), {"rooms": []}, (400, "M_BAD_JSON")),
            (keys_path(), {}, (400, "M_BAD_JSON")),
            (keys_path(), {"rooms": {ROOM: []}}, (400, "M_BAD_JSON")),
            (keys_path(), {"rooms": {ROOM: {"sessions": []}}}, (400, "M_BAD_JSON")),
            (keys_path(), {"rooms": {"": {"sessions": {}}}}, (400, "M_INVALID_PARAM")),
            (keys_path(ROOM), {"sessions": {"s": "x"}}, (400, "M_BAD_JSON")),
            (keys_path(ROOM), {"sessions": {"s" * 256: key(0)}}, (400, "M_INVALID_PARAM")),
            # A good key beside a bad one: nothing is stored.
            (keys_path(ROOM), {"sessions": {"good": key(0), "bad": {**key(0), "is_verified": "yes"}}},
             (400, "M_BAD_JSON")),
            (keys_path(ROOM, "s"), {**key(0), "first_message_index": -1}, (400, "M_BAD_JSON")),
            (keys_path(ROOM, "s"), {**key(0), "first_message_index": True}, (400, "M_BAD_JSON")),
            (keys_path(ROOM, "s"), {**key(0), "forwarded_count": 1.5}, (400, "M_BAD_JSON")),
            (keys_path(ROOM, "s"), {**key(0), "session_data": "x"}, (400, "M_BAD_JSON")),
            (keys_path(ROOM, "s"), {k: v for k, v in key(0).items() if k != "is_verified"}, (400, "M_BAD_JSON")),
            (keys_path(ROOM, "s"), {**key(0), "session_data": {"c": "x" * MAX_SESSION_DATA_BYTES}},
             (413, "M_TOO_LARGE")),
        ]
        for path, payload, expected in bad_keys:
            status, body = await alice("PUT", path, payload)
            assert (status, body["errcode"]) == expected, (path, body)
        status, body = await alice("PUT", keys_path(ROOM, "s"), data=b"[1, 2")
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await raw(server, "GET", f"{V3}/room_keys/version")
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
        # Nothing changed: one key, the same etag.
        status, v = await alice("GET", f"{V3}/room_keys/version")
        assert (v["count"], v["etag"]) == (1, r["etag"])
        assert (await alice("GET", keys_path()))[1] == {"rooms": {ROOM: {"sessions": {"kept": key(1)}}}}

        # Concurrent creations each get their own number.
        created = await asyncio.gather(*(alice("POST", f"{V3}/room_keys/version",
                                               {"algorithm": ALGORITHM, "auth_data": {}}) for _ in range(5)))
        assert sorted(int(body["version"]) for status, body in created if status == 200) == [2, 3, 4, 5, 6]
