"""The one PDU checker (steps 1-3) and the one remote fetcher's budgets and backoff, with
stand-ins for the key ring and the federation client (no network, no database)."""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signedjson.key import generate_signing_key

from homeserver.crypto.keyring import KeyNotFoundError, KeyRing
from homeserver.events.errors import EventError
from homeserver.events.signing import sign_event
from homeserver.events.versions import get_room_version
from homeserver.metrics import Metrics
from homeserver.net.client import FederationClient, FederationRequestError
from homeserver.rooms.checks.receipt import Dropped, PduChecker
from homeserver.rooms.fetcher import Budget, RemoteFetcher
from homeserver.rooms.persist import EventPersister
from homeserver.storage.events import EventStore
from homeserver.util.clock import FakeClock

VERSION = get_room_version("11")
KEY = generate_signing_key("k1")


class Keys:
    async def get_verify_key(self, server_name: str, key_id: str, *, valid_at_ms: int | None = None) -> Any:
        if server_name == "a.test" and key_id == "ed25519:k1":
            return KEY.verify_key
        raise KeyNotFoundError(f"{server_name} {key_id}")


def checker() -> PduChecker:
    return PduChecker(cast(KeyRing, Keys()), Metrics())


def signed(**changes: Any) -> dict[str, Any]:
    base = {
        "type": "m.room.message", "room_id": "!r:a.test", "sender": "@u:a.test", "depth": 3,
        "origin_server_ts": 1, "content": {"body": "hi"}, "prev_events": ["$p"], "auth_events": ["$a"],
    }
    base.update(changes)
    return sign_event(base, VERSION, "a.test", KEY)


async def test_steps_1_to_3() -> None:
    c = checker()
    good = signed()
    event = await c.check(good, VERSION, "$good")
    assert event.event_id == "$good" and not event.redacted_on_receipt
    # 3. A content hash mismatch: used redacted.
    tampered = dict(good, content={"body": "changed"})
    assert (await c.check(tampered, VERSION, "$t")).redacted_on_receipt
    # 2. Signed by nobody we know, or badly: dropped.
    with pytest.raises(Dropped, match=r"^signature"):
        await c.check(signed(sender="@u:b.test"), VERSION, "$b")
    with pytest.raises(Dropped, match=r"^signature"):
        await c.check(dict(good, signatures={"a.test": {"ed25519:k1": "A" * 86}}), VERSION, "$s")
    # 1. Malformed: dropped.
    with pytest.raises(Dropped, match=r"^format"):
        await c.check(dict(good, depth="3"), VERSION, "$f")


class ExpiredKeys:
    """The key of a.test stopped being valid at 100 ms (valid_until_ts)."""

    async def get_verify_key(self, server_name: str, key_id: str, *, valid_at_ms: int | None = None) -> Any:
        if server_name == "a.test" and key_id == "ed25519:k1" and valid_at_ms is not None \
                and valid_at_ms <= 100:
            return KEY.verify_key
        raise KeyNotFoundError(f"{server_name} {key_id} at {valid_at_ms}")


@pytest.mark.parametrize("identifier", [str(n) for n in range(1, 13)])
async def test_key_validity_enforced_from_room_5(identifier: str) -> None:
    version = get_room_version(identifier)
    room_id = "!" + "A" * 43 if version.room_id_is_create_hash else "!r:a.test"
    pdu: dict[str, Any] = {
        "type": "m.room.message", "room_id": room_id, "sender": "@u:a.test", "depth": 3,
        "origin_server_ts": 1_000, "content": {"body": "hi"},
        "prev_events": [["$p:a.test", {}]] if version.origin_event_ids else ["$p"],
        "auth_events": [["$a:a.test", {}]] if version.origin_event_ids else ["$a"],
    }
    if version.origin_event_ids:
        pdu["event_id"] = "$e:a.test"
    pdu = sign_event(pdu, version, "a.test", KEY)
    c = PduChecker(cast(KeyRing, ExpiredKeys()), Metrics())
    if version.enforce_key_validity:
        with pytest.raises(Dropped, match=r"^signature"):
            await c.check(pdu, version, "$e")
    else:
        assert (await c.check(pdu, version, "$e")).sender == "@u:a.test"


async def test_a_fetched_batch_keeps_what_passes_of_its_room() -> None:
    good, other_room = signed(), signed(room_id="!other:a.test")
    pdus: list[Any] = [good, good, "junk", {"type": 5}, other_room, dict(good, depth=-1)]
    checked = await checker().check_all("!r:a.test", VERSION, pdus)
    assert [e.room_id for e in checked.values()] == ["!r:a.test"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["type", "sender", "signatures", "hashes", "content", "depth", "auth_events"]),
       value=st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)
       | st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=2))
async def test_a_malformed_pdu_is_dropped_never_a_crash(key: str, value: Any) -> None:
    pdu = copy.deepcopy(signed())
    pdu[key] = value
    try:
        await checker().check(pdu, VERSION, "$x")
    except (Dropped, EventError):
        pass


class FailingClient:
    def __init__(self, status: int | None) -> None:
        self.status = status
        self.calls = 0

    async def request(self, method: str, server: str, path: str, **kw: Any) -> Any:
        self.calls += 1
        raise FederationRequestError(server, "no", status=self.status)


def fetcher(client: FailingClient, clock: FakeClock) -> RemoteFetcher:
    return RemoteFetcher(cast(FederationClient, client), checker(), cast(EventStore, None),
                         cast(EventPersister, None), Metrics(), backoff_seconds=60.0, clock=clock)


@pytest.mark.parametrize("status", [None, 500, 429])
async def test_a_failing_peer_is_not_asked_again_until_its_backoff_ends(status: int | None) -> None:
    clock = FakeClock()
    client = FailingClient(status)
    f = fetcher(client, clock)
    budget = f.budget(10)
    assert await f.fetch_events("b.test", ["$1", "$2", "$3"], budget) == []
    assert client.calls == 1  # the others were not asked: b.test is backing off
    assert f.backing_off("b.test") and not f.backing_off("c.test")
    await clock.advance(59)
    assert f.backing_off("b.test")
    await clock.advance(2)
    assert not f.backing_off("b.test")
    assert await f.fetch_json("b.test", "event", "GET", "/x", f.budget(10)) is None
    assert client.calls == 2


async def test_a_4xx_is_an_answer_not_a_reason_to_back_off() -> None:
    client = FailingClient(403)
    f = fetcher(client, FakeClock())
    assert await f.fetch_events("b.test", ["$1", "$2"], f.budget(10)) == []
    assert client.calls == 2 and not f.backing_off("b.test")


async def test_a_spent_budget_asks_nobody() -> None:
    clock = FakeClock()
    budget = Budget(5, clock)
    assert budget.left() == 5
    await clock.advance(6)
    assert budget.left() == 0
    client = FailingClient(500)
    assert await fetcher(client, clock).fetch_json("b.test", "event", "GET", "/x", budget) is None
    assert client.calls == 0


def test_a_batch_is_authorized_against_its_own_auth_events_in_any_order() -> None:
    from homeserver.rooms.checks.auth import authorize_batch, cited_elsewhere
    from tests.unit.events.builders import ALL_VERSIONS, BOB, standard_room

    for version in ALL_VERSIONS:
        room = standard_room(version)
        room.set_member(BOB, "join")
        hello = room.send("m.room.message", BOB, {"body": "hi"})
        stranger = room.make("m.room.message", "@eve:e.test", {"body": "let me in"})
        events = {e.event_id: e for e in [hello, stranger, *reversed(room.events)]}
        good, bad, pending = authorize_batch(events, {}, room.room_id)
        assert hello.event_id in good and room.create.event_id in good
        assert bad == {stranger.event_id} and not pending
        # Without its create event, a v12 batch finds it among the events we hold.
        rest = {k: e for k, e in events.items() if k != room.create.event_id}
        wanted = cited_elsewhere(rest, room.room_id)
        assert room.create.event_id in wanted
        good, bad, _ = authorize_batch(rest, {room.create.event_id: room.create}, room.room_id)
        assert hello.event_id in good and bad == {stranger.event_id}
        good, _, _ = authorize_batch(rest, {}, room.room_id)
        assert hello.event_id not in good  # the create event is nowhere: nothing passes
