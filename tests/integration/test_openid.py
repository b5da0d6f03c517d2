"""OpenID (both engines, real HTTP/TLS): a user of A asks A for a token; another party
exchanges it at A's federation ``/openid/userinfo`` (here B's outbound client, without a
signature, as an integration manager would call it) for the user's ID. Only for yourself;
unknown and expired tokens get 401 M_UNKNOWN_TOKEN; the store keeps only hashes and
drops expired rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from homeserver.net.client import FederationRequestError
from homeserver.server import RunningServer, start_server
from homeserver.storage.database import Database
from homeserver.storage.migrations import migrate
from homeserver.storage.openid import OpenIdStore
from tests.clients import nio_user, raw, server_name
from tests.conftest import DatabaseFactory
from tests.servers import make_config

USERINFO = "/_matrix/federation/v1/openid/userinfo"


def request_token_path(user_id: str) -> str:
    return f"/_matrix/client/v3/user/{user_id}/openid/request_token"


class SteppedClock:
    """The system clock, with wall time moved on by ``step`` (the OpenID lifetime is
    measured on the server's wall clock)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def time_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@pytest.fixture
async def clocked_pair(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> AsyncIterator[tuple[RunningServer, RunningServer, SteppedClock]]:
    clock = SteppedClock()
    a = await start_server(make_config(tmp_path / "a", await db_factory.new_settings(), test_ca), clock)
    try:
        b = await start_server(make_config(tmp_path / "b", await db_factory.new_settings(), test_ca))
        try:
            yield a, b, clock
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_openid_round_trip_and_expiry(clocked_pair: tuple[RunningServer, RunningServer, SteppedClock]) -> None:
    a, b, clock = clocked_pair
    client = b.services.federation_client

    async def userinfo(token: str | None) -> object:
        query = {} if token is None else {"access_token": token}
        return await client.get_json(server_name(a), USERINFO, query=query, signed=False)

    async with nio_user(a, "alice") as alice, nio_user(a, "dave") as dave:
        status, reply = await raw(a, "POST", request_token_path(alice.user_id), token=alice.access_token, json={})
        assert status == 200, reply
        assert reply["token_type"] == "Bearer" and reply["matrix_server_name"] == server_name(a)
        assert reply["expires_in"] == 3600
        token = reply["access_token"]
        assert await userinfo(token) == {"sub": alice.user_id}
        # The token is not an access token of the client API.
        status, bad = await raw(a, "GET", "/_matrix/client/v3/account/whoami", token=token)
        assert (status, bad["errcode"]) == (401, "M_UNKNOWN_TOKEN")

        # Not for another user; not without an access token; not with a body that is not JSON.
        status, bad = await raw(a, "POST", request_token_path(alice.user_id), token=dave.access_token, json={})
        assert (status, bad["errcode"]) == (403, "M_FORBIDDEN")
        status, bad = await raw(a, "POST", request_token_path(alice.user_id), json={})
        assert (status, bad["errcode"]) == (401, "M_MISSING_TOKEN")
        status, bad = await raw(a, "POST", request_token_path(alice.user_id), token=alice.access_token,
                                data=b"{nope", headers={"Content-Type": "application/json"})
        assert (status, bad["errcode"]) == (400, "M_NOT_JSON")

        # Unknown, missing and odd tokens.
        for token_value, errcode in (("made-up", "M_UNKNOWN_TOKEN"), (None, "M_MISSING_TOKEN"),
                                     ("é" * 10, "M_UNKNOWN_TOKEN"), ("x" * 5000, "M_UNKNOWN_TOKEN")):
            with pytest.raises(FederationRequestError) as info:
                await userinfo(token_value)
            assert (info.value.status, info.value.errcode) == (401, errcode), token_value

        # An hour later the token is refused.
        clock.offset_ms += 3599 * 1000
        assert await userinfo(token) == {"sub": alice.user_id}
        clock.offset_ms += 2 * 1000
        with pytest.raises(FederationRequestError) as info:
            await userinfo(token)
        assert (info.value.status, info.value.errcode) == (401, "M_UNKNOWN_TOKEN")


async def test_openid_store(db: Database) -> None:
    await migrate(db)
    store = OpenIdStore(db)
    await store.issue("tok-1", "@a:example.org", expires_ts=2_000, now_ms=1_000)
    assert await store.owner("tok-1", 1_999) == "@a:example.org"
    assert await store.owner("tok-1", 2_000) is None
    assert await store.owner("tok-2", 1_000) is None
    # Only the hash is stored.
    assert await db.fetchval("SELECT COUNT(*) FROM openid_tokens WHERE token_hash = ?", "tok-1") == 0
    # Issuing drops the expired rows.
    await store.issue("tok-2", "@b:example.org", expires_ts=9_000, now_ms=5_000)
    assert await db.fetchval("SELECT COUNT(*) FROM openid_tokens") == 1
    assert await store.owner("tok-2", 5_000) == "@b:example.org"
