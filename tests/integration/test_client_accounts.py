"""Accounts over the client-server API, with matrix-nio and raw HTTP: registration (dummy
and token flows), login, whoami, logout; and the spec's errors for bad requests."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from nio import AsyncClient, LoginResponse, RegisterResponse, WhoamiResponse

from homeserver.storage.users import token_hash
from tests.clients import base_url, client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"
PW = "long-enough-pw"


async def test_register_login_whoami_logout(db_factory: DatabaseFactory, tmp_path: Path,
                                            test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server:
        name = server.services.config.server_name
        async with nio_user(server, "alice") as alice:
            assert alice.user_id == f"@alice:{name}"
            who = await alice.whoami()
            assert isinstance(who, WhoamiResponse) and who.user_id == alice.user_id
            assert who.device_id == alice.device_id
            # The token is stored hashed, never in the clear.
            stored = await server.services.db.fetchall("SELECT token_hash FROM access_tokens")
            assert [r[0] for r in stored] == [token_hash(alice.access_token)]
            first_token = alice.access_token

            other = AsyncClient(base_url(server), f"@alice:{name}")
            try:
                assert isinstance(await other.login("wrong password"), LoginResponse) is False
                resp = await other.login("correct horse battery", device_name="second")
                assert isinstance(resp, LoginResponse) and resp.device_id != alice.device_id
                # Logging out one device leaves the other working.
                await other.logout()
                status, body = await raw(server, "GET", f"{V3}/account/whoami", token=resp.access_token)
                assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
                status, _ = await raw(server, "GET", f"{V3}/account/whoami", token=first_token)
                assert status == 200
            finally:
                await other.close()

            # Legacy top-level "user" login, then /logout/all kills every token.
            status, body = await raw(server, "POST", f"{V3}/login", json={
                "type": "m.login.password", "user": "alice", "password": "correct horse battery"})
            assert status == 200 and body["user_id"] == alice.user_id
            status, _ = await raw(server, "POST", f"{V3}/logout/all", token=body["access_token"])
            assert status == 200
            for token in (first_token, body["access_token"]):
                status, body2 = await raw(server, "GET", f"{V3}/account/whoami", token=token)
                assert (status, body2["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_registration_flow_and_errors(db_factory: DatabaseFactory, tmp_path: Path,
                                            test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server:
        # 1. Without auth: 401 with the flows and a session, as user-interactive auth opens.
        status, body = await raw(server, "POST", f"{V3}/register", json={"username": "bob", "password": PW})
        assert status == 401
        assert body["flows"] == [{"stages": ["m.login.dummy"]}] and body["session"] and "errcode" not in body
        # 2. Completing the dummy stage registers.
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "bob", "password": PW, "auth": {"type": "m.login.dummy", "session": body["session"]}})
        assert status == 200 and body["user_id"].startswith("@bob:") and body["access_token"]
        # 3. Taken, invalid, guest.
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "bob", "password": PW, "auth": {"type": "m.login.dummy"}})
        assert (status, body["errcode"]) == (400, "M_USER_IN_USE")
        status, body = await raw(server, "GET", f"{V3}/register/available?username=bob")
        assert (status, body["errcode"]) == (400, "M_USER_IN_USE")
        status, body = await raw(server, "GET", f"{V3}/register/available?username=carol")
        assert (status, body) == (200, {"available": True})
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "Bad Name!", "password": PW, "auth": {"type": "m.login.dummy"}})
        assert (status, body["errcode"]) == (400, "M_INVALID_USERNAME")
        status, body = await raw(server, "POST", f"{V3}/register?kind=guest", json={})
        assert (status, body["errcode"]) == (403, "M_GUEST_ACCESS_FORBIDDEN")
        # 4. Login failures.
        status, body = await raw(server, "POST", f"{V3}/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "no"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(server, "POST", f"{V3}/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "no"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(server, "POST", f"{V3}/login", json={"type": "m.login.sso"})
        assert (status, body["errcode"]) == (400, "M_UNKNOWN")
        status, body = await raw(server, "GET", f"{V3}/login")
        assert (status, body) == (200, {"flows": [{"type": "m.login.password"}]})


async def test_bad_requests_get_spec_errors(db_factory: DatabaseFactory, tmp_path: Path,
                                            test_ca: tuple[Path, Path]) -> None:
    extra = {"client": {"max_body_bytes": 4096}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server, nio_user(server) as alice:
        token = alice.access_token
        assert (await raw(server, "GET", f"{V3}/account/whoami"))[1]["errcode"] == "M_MISSING_TOKEN"
        status, body = await raw(server, "GET", f"{V3}/account/whoami", token="nope")
        assert (status, body["errcode"], body["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", False)
        status, body = await raw(server, "GET", f"{V3}/account/whoami?access_token={token}")
        assert status == 200 and body["user_id"] == alice.user_id
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, data=b"{not json")
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json=[1, 2])
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json={"invite": "x"})
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json={"preset": "nope"})
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token, json={"room_version": "999"})
        assert (status, body["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
        status, body = await raw(server, "POST", f"{V3}/createRoom", token=token,
                                 json={"name": "x" * 10_000})
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        status, body = await raw(server, "GET", "/_matrix/client/v3/no/such/endpoint", token=token)
        assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
        status, body = await raw(server, "DELETE", f"{V3}/createRoom", token=token)
        assert (status, body["errcode"]) == (405, "M_UNRECOGNIZED")
        # Unknown room, not a member, forbidden moderation.
        status, body = await raw(server, "PUT", f"{V3}/rooms/!nope:{server.services.config.server_name}"
                                 "/send/m.room.message/t1", token=token, json={"body": "x", "msgtype": "m.text"})
        assert status in (403, 404) and body["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND")
        status, body = await raw(server, "GET", f"{V3}/rooms/!nope:x/messages?dir=b", token=token)
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await raw(server, "GET", f"{V3}/sync?since=garbage", token=token)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        # CORS for Element: preflight and headers on every reply, errors included.
        async with aiohttp.ClientSession() as s:
            async with s.options(base_url(server) + f"{V3}/sync") as r:
                assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            async with s.get(base_url(server) + f"{V3}/sync") as r:
                assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == "*"
        status, body = await raw(server, "GET", "/_matrix/client/versions")
        assert status == 200 and "v1.11" in body["versions"]
        status, body = await raw(server, "GET", "/.well-known/matrix/client")
        assert body == {"m.homeserver": {"base_url": base_url(server)}}


async def test_rate_limit_and_disabled_registration(db_factory: DatabaseFactory, tmp_path: Path,
                                                    test_ca: tuple[Path, Path]) -> None:
    extra = {"client": {"enable_registration": False,
                        "login_rate_limit": {"per_second": 0.001, "burst_count": 2}}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server:
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "x", "password": PW, "auth": {"type": "m.login.dummy"}})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        login = {"type": "m.login.password", "user": "x", "password": PW}
        assert (await raw(server, "POST", f"{V3}/login", json=login))[0] == 403
        assert (await raw(server, "POST", f"{V3}/login", json=login))[0] == 403
        status, body = await raw(server, "POST", f"{V3}/login", json=login)
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
        assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0


async def test_registration_token_flow(db_factory: DatabaseFactory, tmp_path: Path,
                                       test_ca: tuple[Path, Path]) -> None:
    extra = {"client": {"registration_token": "let-me-in"}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server:
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "x", "password": PW, "auth": {"type": "m.login.dummy"}})
        assert status == 401 and body["flows"] == [{"stages": ["m.login.registration_token", "m.login.dummy"]}]
        status, body2 = await raw(server, "POST", f"{V3}/register", json={
            "username": "x", "password": PW,
            "auth": {"type": "m.login.registration_token", "token": "wrong", "session": body["session"]}})
        assert (status, body2["errcode"]) == (401, "M_FORBIDDEN")
        status, body = await raw(server, "GET", f"{V3}/register/m.login.registration_token/validity?token=let-me-in")
        assert (status, body) == (200, {"valid": True})
        # matrix-nio's token registration: open a session, the token stage, then dummy.
        client = AsyncClient(base_url(server))
        try:
            resp = await client.register_with_token("tokenuser", PW, "let-me-in")
            assert isinstance(resp, RegisterResponse), resp
            assert resp.user_id == f"@tokenuser:{server.services.config.server_name}"
        finally:
            await client.close()

