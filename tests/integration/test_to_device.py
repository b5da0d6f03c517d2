"""Send-to-device messaging (both engines, real servers, real HTTP): local delivery, kept
until a later since-token acknowledges it, then deleted; txnId idempotency; the ``*``
wildcard; the long-poll woken by a message; device deletion dropping the queue; bounds and
bad input; two servers (m.direct_to_device EDUs); an EDU retried in another transaction
delivered once; an EDU claiming another server's sender refused and counted."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from homeserver.client_api.to_device import MAX_MESSAGE_BYTES, SEND_RATE, SYNC_LIMIT
from homeserver.server import RunningServer
from tests.clients import client_server, eventually, nio_user, raw, server_name
from tests.conftest import DatabaseFactory
from tests.remote import fake_remote
from tests.servers import make_config, running_server

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse battery"  # nio_user's
WAIT = 30.0


class Device:
    def __init__(self, user_id: str, device_id: str, token: str) -> None:
        self.user_id, self.device_id, self.token = user_id, device_id, token
        self.since: str | None = None


async def login(server: RunningServer, user_id: str, device_id: str) -> Device:
    status, body = await raw(server, "POST", f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
        "password": PASSWORD, "device_id": device_id})
    assert status == 200, body
    return Device(body["user_id"], body["device_id"], body["access_token"])


async def send(server: RunningServer, sender: Device, messages: Any, *, event_type: str = "m.test",
               txn: str | None = None) -> tuple[int, Any]:
    txn = txn or secrets.token_hex(6)
    return await raw(server, "PUT", f"{V3}/sendToDevice/{quote(event_type, safe='')}/{quote(txn, safe='')}",
                     token=sender.token, json={"messages": messages})


async def sync(server: RunningServer, device: Device, since: str | None = None, timeout: int = 0) -> dict[str, Any]:
    """One /sync from ``since`` (default: the device's last position), which becomes the
    device's position."""
    since = since if since is not None else device.since
    query = f"?timeout={timeout}" + (f"&since={since}" if since else "")
    status, body = await raw(server, "GET", f"{V3}/sync{query}", token=device.token)
    assert status == 200, body
    device.since = body["next_batch"]
    return body


def to_device(body: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = body["to_device"]["events"]
    return events


async def queue(server: RunningServer, device: Device) -> int:
    return await server.services.to_device.queue_length(device.user_id, device.device_id)


async def sync_until_messages(server: RunningServer, device: Device, count: int) -> list[dict[str, Any]]:
    """Long-poll until ``count`` messages arrived (bounded rounds)."""
    got: list[dict[str, Any]] = []
    for _ in range(20):
        got += to_device(await sync(server, device, timeout=3000))
        if len(got) >= count:
            return got
    raise AssertionError(f"only {len(got)} of {count} messages arrived")


def metric(server: RunningServer, name: str, labels: dict[str, str]) -> float:
    return server.services.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_local_delivery_acknowledgement_txn_and_wildcard(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as a, nio_user(server, "bob") as b:
        alice = Device(a.user_id, a.device_id, a.access_token)
        bob = Device(b.user_id, b.device_id, b.access_token)
        phone = await login(server, "bob", "PHONE")
        start = await sync(server, bob)
        assert to_device(start) == []
        await sync(server, phone)

        # A message for Bob's first device; the same txnId again delivers nothing more.
        status, body = await send(server, alice, {bob.user_id: {bob.device_id: {"n": 1}}}, txn="t1")
        assert (status, body) == (200, {})
        status, body = await send(server, alice, {bob.user_id: {bob.device_id: {"n": 2}}}, txn="t1")
        assert (status, body) == (200, {})
        first = await sync(server, bob)
        assert to_device(first) == [{"sender": alice.user_id, "type": "m.test", "content": {"n": 1}}]
        assert to_device(await sync(server, phone)) == []
        # The same txnId from another device of the sender is another request.
        alice2 = await login(server, "alice", "ALICE2")
        assert (await send(server, alice2, {bob.user_id: {bob.device_id: {"n": 3}}}, txn="t1"))[0] == 200

        # Kept until a later since-token proves receipt: syncing again from the old token
        # gives it again; from the new one, it is deleted.
        again = await sync(server, bob, since=start["next_batch"])
        assert [e["content"] for e in to_device(again)] == [{"n": 1}, {"n": 3}]
        assert await queue(server, bob) == 2
        assert to_device(await sync(server, bob)) == []
        assert await queue(server, bob) == 0

        # "*": every device of the user; an unknown device gets nothing (and is not kept).
        status, _ = await send(server, alice, {bob.user_id: {"*": {"all": True}, "NOSUCH": {"x": 1}}})
        assert status == 200
        for device in (bob, phone):
            assert to_device(await sync(server, device)) == [
                {"sender": alice.user_id, "type": "m.test", "content": {"all": True}}]
            assert to_device(await sync(server, device)) == []
            assert await queue(server, device) == 0
        assert await server.services.to_device.queue_length(bob.user_id, "NOSUCH") == 0

        # At most SYNC_LIMIT a response; the rest in the next one, in order.
        many = {bob.user_id: {bob.device_id: {"n": 0}}}
        for i in range(SYNC_LIMIT + 20):  # from two devices: each has its own rate limit
            many[bob.user_id][bob.device_id] = {"n": i}
            assert (await send(server, (alice, alice2)[i % 2], many))[0] == 200
        page1 = to_device(await sync(server, bob))
        page2 = to_device(await sync(server, bob))
        assert [e["content"]["n"] for e in page1 + page2] == list(range(SYNC_LIMIT + 20))
        assert len(page1) == SYNC_LIMIT
        # An old-form token (no to-device part) still works: it acknowledges nothing.
        status, _ = await raw(server, "GET", f"{V3}/sync?since=s0_0_0_0", token=bob.token)
        assert status == 200


async def test_long_poll_wakes_and_device_deletion_drops_the_queue(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server, \
            nio_user(server, "alice") as a, nio_user(server, "bob") as b:
        alice = Device(a.user_id, a.device_id, a.access_token)
        bob = Device(b.user_id, b.device_id, b.access_token)
        await sync(server, bob)
        # A long-poll with nothing to give is woken by a message for its device (without
        # the wake-up it would end empty at its timeout).
        poll = asyncio.create_task(sync(server, bob, timeout=30_000))
        await eventually(lambda: asyncio.sleep(0, server.services.notifier.waiting > 0))
        assert (await send(server, alice, {bob.user_id: {bob.device_id: {"wake": 1}}}))[0] == 200
        assert [e["content"] for e in to_device(await poll)] == [{"wake": 1}]

        # Deleting a device drops its queue; logging out does too.
        phone = await login(server, "bob", "PHONE")
        tablet = await login(server, "bob", "TABLET")
        assert (await send(server, alice, {bob.user_id: {"PHONE": {"x": 1}, "TABLET": {"x": 2}}}))[0] == 200
        assert await queue(server, phone) == 1 and await queue(server, tablet) == 1
        status, body = await raw(server, "POST", f"{V3}/delete_devices", token=bob.token, json={
            "devices": ["PHONE"], "auth": {"type": "m.login.password", "user": bob.user_id, "password": PASSWORD}})
        assert status == 200, body
        assert await queue(server, phone) == 0
        status, _ = await raw(server, "POST", f"{V3}/logout", token=tablet.token, json={})
        assert status == 200
        assert await queue(server, tablet) == 0
        # A device created again under the same ID starts empty.
        again = await login(server, "bob", "PHONE")
        assert to_device(await sync(server, again)) == []


async def test_bounds_and_bad_input(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    config_extra = {"client": {"max_body_bytes": 256 * 1024}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra=config_extra) as server, \
            nio_user(server, "alice") as a, nio_user(server, "bob") as b:
        alice = Device(a.user_id, a.device_id, a.access_token)
        bob = Device(b.user_id, b.device_id, b.access_token)
        ok = {bob.user_id: {bob.device_id: {"k": "v"}}}
        cases: list[tuple[Any, tuple[int, str]]] = [
            ("not an object", (400, "M_BAD_JSON")),
            ([], (400, "M_BAD_JSON")),
            ({bob.user_id: "x"}, (400, "M_BAD_JSON")),
            ({bob.user_id: {bob.device_id: "not an object"}}, (400, "M_BAD_JSON")),
            ({bob.user_id: {bob.device_id: [1]}}, (400, "M_BAD_JSON")),
            ({"bob": {bob.device_id: {}}}, (400, "M_INVALID_PARAM")),
            ({"@bob:bad host": {bob.device_id: {}}}, (400, "M_INVALID_PARAM")),
            ({bob.user_id: {"": {}}}, (400, "M_INVALID_PARAM")),
            ({bob.user_id: {"D" * 256: {}}}, (400, "M_INVALID_PARAM")),
            # A valid message beside a bad one: nothing is stored.
            ({bob.user_id: {bob.device_id: {"ok": 1}, "OTHER": {"big": "x" * MAX_MESSAGE_BYTES}}},
             (413, "M_TOO_LARGE")),
        ]
        for messages, expected in cases:
            status, body = await send(server, alice, messages)
            assert (status, body["errcode"]) == expected, (messages if len(str(messages)) < 200 else "", body)
        status, body = await raw(server, "PUT", f"{V3}/sendToDevice/m.test/t", token=alice.token, json={})
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await raw(server, "PUT", f"{V3}/sendToDevice/m.test/t", token=alice.token, data=b"{nope")
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await raw(server, "PUT", f"{V3}/sendToDevice/m.test/t", token=alice.token,
                                 data=b'{"messages": {"x": "' + b"y" * 300_000 + b'"}}')
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
        status, body = await send(server, alice, ok, txn="t" * 256)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await send(server, alice, ok, event_type="e" * 256)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
        status, body = await raw(server, "PUT", f"{V3}/sendToDevice/m.test/t", json={"messages": ok})
        assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
        assert await queue(server, bob) == 0
        # Refused requests did not spend the txnIds they named.
        assert (await send(server, alice, ok, txn="t"))[0] == 200
        assert await queue(server, bob) == 1

        # The per-device queue bound: the oldest messages go, counted.
        server.services.to_device.max_per_device = 3
        for i in range(5):
            assert (await send(server, alice, {bob.user_id: {bob.device_id: {"i": i}}}))[0] == 200
        assert [e["content"] for e in to_device(await sync(server, bob))] == [{"i": 2}, {"i": 3}, {"i": 4}]
        assert metric(server, "hs_to_device_dropped_total", {"reason": "queue_full"}) == 3

        # The per-device rate limit: 429 with retry_after_ms once the burst is spent; the
        # other device of the same user has its own bucket.
        refused: list[Any] = []
        for _ in range(20):  # bursts of concurrent requests outrun the refill; bounded
            replies = await asyncio.gather(*(
                send(server, bob, {alice.user_id: {alice.device_id: {}}}) for _ in range(SEND_RATE.burst_count)))
            refused = [body for status, body in replies if status == 429]
            if refused:
                break
        assert refused and all(b["errcode"] == "M_LIMIT_EXCEEDED" and b["retry_after_ms"] > 0 for b in refused)
        other = await login(server, "bob", "OTHER")
        assert (await send(server, other, {alice.user_id: {alice.device_id: {}}}))[0] == 200


async def test_two_servers(db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server_a, \
            client_server(db_factory, tmp_path / "b", test_ca) as server_b, \
            nio_user(server_a, "alice") as a, nio_user(server_b, "bob") as b:
        alice = Device(a.user_id, a.device_id, a.access_token)
        bob = Device(b.user_id, b.device_id, b.access_token)
        phone = await login(server_b, "bob", "PHONE")
        await sync(server_b, bob)
        await sync(server_b, phone)
        # One device by ID and, in a second request, all of Bob's devices.
        assert (await send(server_a, alice, {bob.user_id: {bob.device_id: {"secret": "one"}}}))[0] == 200
        assert (await send(server_a, alice, {bob.user_id: {"*": {"secret": "all"}}}))[0] == 200
        got = await sync_until_messages(server_b, bob, 2)
        assert got == [{"sender": alice.user_id, "type": "m.test", "content": {"secret": "one"}},
                       {"sender": alice.user_id, "type": "m.test", "content": {"secret": "all"}}]
        assert [e["content"] for e in await sync_until_messages(server_b, phone, 1)] == [{"secret": "all"}]
        # And back, the other way.
        await sync(server_a, alice)
        assert (await send(server_b, bob, {alice.user_id: {alice.device_id: {"reply": True}}}))[0] == 200
        assert [e["sender"] for e in await sync_until_messages(server_a, alice, 1)] == [bob.user_id]
        # What left A went only to B, as m.direct_to_device EDUs of Alice's.
        assert metric(server_a, "hs_outbound_refused_edus_total", {}) == 0
        # Acknowledged: nothing left queued on B.
        await sync(server_b, bob)
        assert await queue(server_b, bob) == 0
        assert server_name(server_a) != server_name(server_b)


async def test_inbound_edu_once_and_only_from_its_senders_server(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    async with running_server(config) as server, fake_remote(test_ca, tmp_path / "remote") as remote, \
            nio_user(server, "bob") as b:
        bob = Device(b.user_id, b.device_id, b.access_token)
        await sync(server, bob)
        sender = f"@carol:{remote.server_name}"

        def edu(message_id: str, who: str, content: dict[str, Any], device: str | None = None) -> dict[str, Any]:
            return {"edu_type": "m.direct_to_device", "content": {
                "sender": who, "type": "m.room_key_request", "message_id": message_id,
                "messages": {bob.user_id: {device or bob.device_id: content}}}}

        # The same EDU twice, in two transactions (a retry after a lost reply): delivered once.
        for _ in range(2):
            status, _ = await remote.send(server, [], [edu("m1", sender, {"n": 1})])
            assert status == 200
            assert await server.services.inbound_worker.wait_idle(WAIT)
        # A new message_id is a new message; "*" reaches every device.
        status, _ = await remote.send(server, [], [edu("m2", sender, {"n": 2}, "*")])
        assert status == 200
        assert await server.services.inbound_worker.wait_idle(WAIT)
        got = await sync_until_messages(server, bob, 2)
        assert got == [{"sender": sender, "type": "m.room_key_request", "content": {"n": 1}},
                       {"sender": sender, "type": "m.room_key_request", "content": {"n": 2}}]
        assert metric(server, "hs_inbound_edus_dropped_total",
                      {"origin": remote.server_name, "reason": "duplicate"}) == 1

        # An EDU claiming a user of another server is refused at the door and counted;
        # so is one without a message_id.
        status, _ = await remote.send(server, [], [
            edu("m3", "@mallory:elsewhere.test", {"n": 3}),
            {"edu_type": "m.direct_to_device", "content": {
                "sender": sender, "type": "m.x", "messages": {bob.user_id: {bob.device_id: {}}}}},
        ])
        assert status == 200
        assert await server.services.inbound_worker.wait_idle(WAIT)
        assert metric(server, "hs_inbound_edus_dropped_total",
                      {"origin": remote.server_name, "reason": "foreign_user"}) == 1
        assert metric(server, "hs_inbound_edus_dropped_total",
                      {"origin": remote.server_name, "reason": "malformed"}) == 1
        assert to_device(await sync(server, bob)) == []
        assert await queue(server, bob) == 0
