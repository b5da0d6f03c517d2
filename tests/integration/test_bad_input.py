"""Bad input through the client API gets a Matrix error, never a 500 (both engines, a real
server, raw HTTP): NUL characters and unpaired surrogates in bodies, path and query
parameters; numbers beyond a double (``1e400``); oversized free-form IDs; an invalid
``filter`` on /messages; a URL over 8 KB; an Authorization header that is not ASCII. And
nothing of it is logged as an ERROR."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from homeserver.server import RunningServer
from tests.clients import base_url, client_server, nio_user, raw
from tests.conftest import DatabaseFactory

V3 = "/_matrix/client/v3"


async def send(
    server: RunningServer, method: str, path: str, *, token: str | None = None, body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A request whose path is sent exactly as given (already percent-encoded) and whose
    body is these bytes."""
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.request(
        method, URL(base_url(server) + path, encoded=True), data=body, headers=hdrs
    ) as r:
        text = await r.read()
        return r.status, json.loads(text) if text else None


async def raw_request(server: RunningServer, request: bytes) -> tuple[int, Any]:
    """These bytes on a connection of their own; the status and JSON body of the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.client_port)
    try:
        writer.write(request)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_nul_surrogates_and_infinities_are_400(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as alice:
        token = alice.access_token
        status, created = await raw(server, "POST", f"{V3}/createRoom", token=token, json={})
        assert status == 200, created
        room = quote(created["room_id"], safe="")
        user = quote(alice.user_id, safe="")

        # Bodies: each string or key with NUL or an unpaired surrogate, each infinite number.
        bodies: list[tuple[str, str, bytes]] = [
            ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t1", b'{"msgtype":"m.text","body":"\\ud800"}'),
            ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t2", b'{"msgtype":"m.text","body":"a\\u0000b"}'),
            ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t3", b'{"msgtype":"m.text","\\udfff":"x"}'),
            ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t4", b'{"msgtype":"m.text","body":"x","n":1e400}'),
            ("PUT", f"{V3}/rooms/{room}/state/m.room.topic", b'{"topic":"\\u0000"}'),
            ("POST", f"{V3}/createRoom", b'{"creation_content":{"x":1e400}}'),
            ("POST", f"{V3}/createRoom", b'{"creation_content":{"x":-1e400}}'),
            ("POST", f"{V3}/createRoom", b'{"name":"\\ud83d"}'),
            ("PUT", f"{V3}/profile/{user}/displayname", b'{"displayname":"al\\u0000ice"}'),
            ("PUT", f"{V3}/profile/{user}/displayname", b'{"displayname":"\\udc00"}'),
            ("PUT", f"{V3}/devices/{alice.device_id}", b'{"display_name":"ph\\u0000ne"}'),
            ("PUT", f"{V3}/user/{user}/account_data/m.x", b'{"k":"\\u0000"}'),
            ("POST", f"{V3}/user/{user}/filter", b'{"room":{"timeline":{"limit":1e400}}}'),
        ]
        for method, path, body in bodies:
            status, reply = await send(server, method, path, token=token, body=body)
            assert (status, reply["errcode"]) == (400, "M_BAD_JSON"), (path, body, reply)
        # A paired surrogate escape is one character: accepted.
        status, reply = await send(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/ok",
                                   token=token, body=b'{"msgtype":"m.text","body":"\\ud83d\\ude00"}')
        assert status == 200, reply

        # Path parameters: NUL (%00) in a state key, an event type, an account data type, a
        # transaction ID, a device ID, a profile field.
        paths = [
            ("PUT", f"{V3}/rooms/{room}/state/m.room.topic/a%00b", b'{"topic":"x"}'),
            ("PUT", f"{V3}/rooms/{room}/state/m.x%00y/", b'{"a":1}'),
            ("PUT", f"{V3}/rooms/{room}/send/m.room.message/t%00x", b'{"msgtype":"m.text","body":"x"}'),
            ("PUT", f"{V3}/rooms/{room}/send/m%00x/t9", b'{"body":"x"}'),
            ("PUT", f"{V3}/user/{user}/account_data/m.%00x", b'{"k":1}'),
            ("GET", f"{V3}/user/{user}/account_data/m.%00x", None),
            ("PUT", f"{V3}/user/{user}/rooms/{room}/account_data/m.%00x", b'{"k":1}'),
            ("GET", f"{V3}/devices/DEV%00ICE", None),
            ("PUT", f"{V3}/devices/DEV%00ICE", b'{"display_name":"x"}'),
            ("GET", f"{V3}/user/{user}/filter/1%00", None),
            ("GET", f"{V3}/rooms/{room}/state/m.room.topic/%00", None),
            ("POST", f"{V3}/rooms/{room}/receipt/m.read%00/$x", b"{}"),
            ("GET", f"{V3}/directory/room/%23a%00b%3Alocalhost", None),
        ]
        for method, path, body in paths:
            status, reply = await send(server, method, path, token=token, body=body)
            assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), (path, reply)
        # Query parameters: a NUL in a filter ID, a pagination token, a server name.
        for path in (f"{V3}/sync?filter=a%00b", f"{V3}/rooms/{room}/messages?dir=b&from=%00",
                     f"{V3}/publicRooms?server=a%00b"):
            status, reply = await send(server, "GET", path, token=token)
            assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), (path, reply)

        # Still answering, and none of it stored.
        status, state = await raw(server, "GET", f"{V3}/rooms/{room}/state", token=token)
        assert status == 200 and not any("\x00" in e.get("state_key", "") for e in state)
    no_errors_logged(caplog)


async def test_free_form_ids_have_length_limits(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as alice:
        token = alice.access_token
        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                 "password": "correct horse battery"}
        for extra in ({"device_id": "D" * 10_000}, {"device_id": "D" * 256},
                      {"initial_device_display_name": "n" * 101}):
            status, reply = await raw(server, "POST", f"{V3}/login", json={**login, **extra})
            assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), (extra, reply)
        status, reply = await raw(server, "POST", f"{V3}/register", json={
            "username": "bob", "password": "correct horse battery", "device_id": "D" * 10_000,
            "auth": {"type": "m.login.dummy"}})
        assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), reply
        status, reply = await raw(server, "POST", f"{V3}/login", json={**login, "device_id": "D" * 255})
        assert status == 200 and reply["device_id"] == "D" * 255, reply

        status, created = await raw(server, "POST", f"{V3}/createRoom", token=token, json={})
        room = quote(created["room_id"], safe="")
        user = quote(alice.user_id, safe="")
        long = "x" * 256
        for method, path, body in (
            ("PUT", f"{V3}/rooms/{room}/send/m.room.message/{long}", {"msgtype": "m.text", "body": "x"}),
            ("PUT", f"{V3}/rooms/{room}/send/{long}/t1", {"body": "x"}),
            ("PUT", f"{V3}/rooms/{room}/state/m.room.topic/{long}", {"topic": "x"}),
            ("PUT", f"{V3}/user/{user}/account_data/{long}", {"k": 1}),
            ("GET", f"{V3}/user/{user}/filter/{long}", None),
            ("GET", f"{V3}/devices/{long}", None),
            ("PUT", f"{V3}/directory/room/%23{long}%3Alocalhost", {"room_id": created["room_id"]}),
        ):
            status, reply = await send(server, method, path, token=token,
                                       body=None if body is None else json.dumps(body).encode())
            assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), (path, reply)
        # A receipt's thread ID (it goes to every member's /sync and to other servers).
        status, sent = await raw(server, "PUT", f"{V3}/rooms/{room}/send/m.room.message/m1", token=token,
                                 json={"msgtype": "m.text", "body": "hi"})
        assert status == 200, sent
        event = quote(sent["event_id"], safe="")
        status, reply = await raw(server, "POST", f"{V3}/rooms/{room}/receipt/m.read/{event}", token=token,
                                  json={"thread_id": "t" * 256})
        assert (status, reply["errcode"]) == (400, "M_INVALID_PARAM"), reply
        status, reply = await raw(server, "POST", f"{V3}/rooms/{room}/receipt/m.read/{event}", token=token,
                                  json={"thread_id": "main"})
        assert status == 200, reply
    no_errors_logged(caplog)


async def test_invalid_filter_on_messages_is_400(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as alice:
        token = alice.access_token
        status, created = await raw(server, "POST", f"{V3}/createRoom", token=token, json={})
        room = quote(created["room_id"], safe="")
        for flt, errcode in (
            ("not json", "M_NOT_JSON"),
            ("[1,2]", "M_INVALID_PARAM"),
            ('{"limit":"ten"}', "M_INVALID_PARAM"),
            ('{"types":"m.room.message"}', "M_INVALID_PARAM"),
            ('{"lazy_load_members":"yes"}', "M_INVALID_PARAM"),
            ('{"senders":[1]}', "M_INVALID_PARAM"),
        ):
            status, reply = await send(server, "GET", f"{V3}/rooms/{room}/messages?dir=b&filter={quote(flt)}",
                                       token=token)
            assert (status, reply["errcode"]) == (400, errcode), (flt, reply)
        # A valid filter still pages.
        ok = quote(json.dumps({"lazy_load_members": True, "types": ["m.room.message"], "limit": 5}))
        status, reply = await send(server, "GET", f"{V3}/rooms/{room}/messages?dir=b&filter={ok}", token=token)
        assert status == 200 and "chunk" in reply, reply
        # /sync: an inline filter that is not JSON, and an unknown filter ID.
        for flt, errcode in (("{nope", "M_NOT_JSON"), ("12345", "M_INVALID_PARAM")):
            status, reply = await send(server, "GET", f"{V3}/sync?filter={quote(flt)}", token=token)
            assert (status, reply["errcode"]) == (400, errcode), (flt, reply)


async def test_long_url_and_bad_headers_get_json_errors(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, nio_user(server, "alice") as alice:
        # A 9 KB URL: 414, a Matrix error body, no traceback logged.
        status, reply = await send(server, "GET", f"{V3}/rooms/!{'x' * 9000}:localhost/state", token=alice.access_token)
        assert status == 414 and reply["errcode"] == "M_TOO_LARGE", reply
        # A 9 KB header: 431.
        status, reply = await send(server, "GET", f"{V3}/account/whoami", headers={"X-Big": "y" * 9000})
        assert status == 431 and reply["errcode"] == "M_TOO_LARGE", reply
        # A token whose bytes are not UTF-8: 401, not a 500.
        status, reply = await raw_request(
            server, f"GET {V3}/account/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ".encode()
            + b"t\xe9\xffst\r\nConnection: close\r\n\r\n")
        assert status == 401 and reply["errcode"] == "M_UNKNOWN_TOKEN", reply
        # Many of them: one log line per interval, not one each.
        for _ in range(20):
            status, _ = await send(server, "GET", "/" + "z" * 9000)
            assert status == 414
        status, reply = await raw(server, "GET", f"{V3}/account/whoami", token=alice.access_token)
        assert status == 200, reply
    refused = [r for r in caplog.records if r.getMessage() == "malformed HTTP request refused"]
    assert 1 <= len(refused) <= 2, [r.getMessage() for r in refused]
    no_errors_logged(caplog)
