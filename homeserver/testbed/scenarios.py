"""Federation scenarios run against a running testbed, through the public APIs only: users
act through the client-server API, figures come from each server's ``/metrics``.

- ``amplification``: a user of every server joins one room and sends M messages. Each
  server should receive each other server's messages exactly once: received PDUs per
  server = M x (N - 1), an amplification factor of 1.0 (0.18.5 relayed every event it
  received, and the factor grew with the number of servers).
- ``ban``: a user of the first server bans a user of the second; the ban reaches the
  banned server (which then has nobody left in the room).
- ``outage``: one server stops, the others send; their queues for it fill and they back
  off; it starts again and catches up; every message arrives.

Each scenario returns a table and one line of figures (``key=value`` pairs, ``result=PASS``
or ``FAIL``), printed last. Every wait is bounded; a scenario that times out fails.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from homeserver.testbed import manager
from homeserver.testbed.client import ClientError, MatrixUser, MetricsSample, scrape
from homeserver.testbed.state import ServerEntry, TestbedError, TestbedState

SETTLE_QUIET_SECONDS = 1.0
SETTLE_TIMEOUT_SECONDS = 60.0
PROGRESS_INTERVAL_SECONDS = 2.0
POLL_SECONDS = 0.25


@dataclass
class ScenarioResult:
    name: str
    ok: bool
    table: list[list[str]]
    figures: dict[str, Any] = field(default_factory=dict)

    def figures_line(self) -> str:
        parts = [f"{k}={v}" for k, v in self.figures.items()]
        return " ".join([self.name, *parts, f"result={'PASS' if self.ok else 'FAIL'}"])


class Progress:
    """A progress line on stderr at most every couple of seconds (stdout stays for the table)."""

    def __init__(self, name: str, enabled: bool = True) -> None:
        self._name = name
        self._enabled = enabled
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._enabled and (force or now - self._last >= PROGRESS_INTERVAL_SECONDS):
            self._last = now
            print(f"[{self._name} {now - self._started:6.1f}s] {text}", file=sys.stderr, flush=True)


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], timeout: float, progress: Progress | None = None,
    describe: Callable[[], str] | None = None,
) -> bool:
    """Poll ``check`` until it is true or ``timeout`` passes; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        if progress is not None:
            progress(f"{what}: {describe() if describe else 'waiting'}")
        await asyncio.sleep(POLL_SECONDS)


# ---------------------------------------------------------------------- shared steps


async def scrape_all(session: aiohttp.ClientSession, servers: list[ServerEntry]) -> list[MetricsSample]:
    return list(await asyncio.gather(*(scrape(session, s.metrics_url) for s in servers)))


def _activity(sample: MetricsSample) -> tuple[float, ...]:
    return (
        sample.total("hs_inbound_pdus_total"),
        sample.total("hs_outbound_pdus_total"),
        sample.total("hs_events_processed_total"),
    )


async def settle(
    session: aiohttp.ClientSession, servers: list[ServerEntry], progress: Progress,
    timeout: float = SETTLE_TIMEOUT_SECONDS,
) -> bool:
    """Wait until federation is quiet: every inbox and outbound queue empty, and no
    counter moving for ``SETTLE_QUIET_SECONDS``."""
    deadline = time.monotonic() + timeout
    last: list[tuple[float, ...]] | None = None
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        samples = await scrape_all(session, servers)
        busy = sum(s.total("hs_inbox_depth") + s.total("hs_outbound_destination_queue_depth") for s in samples)
        now_activity = [_activity(s) for s in samples]
        if busy or now_activity != last:
            quiet_since = time.monotonic()
        last = now_activity
        if not busy and time.monotonic() - quiet_since >= SETTLE_QUIET_SECONDS:
            return True
        progress(f"settling: {int(busy)} queued")
        await asyncio.sleep(POLL_SECONDS)
    return False


@dataclass
class SharedRoom:
    room_id: str
    users: list[MatrixUser]  # users[i] on servers[i]


async def shared_room(
    session: aiohttp.ClientSession, servers: list[ServerEntry], tag: str, progress: Progress
) -> SharedRoom:
    """A user on each server; the first creates a public room, the others join it."""
    users = [await MatrixUser.register(session, s.client_url, f"{tag}_{s.name}") for s in servers]
    room_id = await users[0].create_room(f"testbed {tag}")
    for i, user in enumerate(users[1:], start=1):
        progress(f"joining {servers[i].name}", force=True)
        await user.join(room_id, [servers[0].server_name])
    return SharedRoom(room_id, users)


def _bodies(events: list[dict[str, Any]], prefix: str) -> set[str]:
    out: set[str] = set()
    for e in events:
        body = (e.get("content") or {}).get("body")
        if e.get("type") == "m.room.message" and isinstance(body, str) and body.startswith(prefix):
            out.add(body)
    return out


def _pick(state: TestbedState, minimum: int) -> list[ServerEntry]:
    if len(state.servers) < minimum:
        raise TestbedError(f"this scenario needs at least {minimum} servers; the testbed has {len(state.servers)}")
    return list(state.servers)


def _fmt(x: float) -> str:
    return f"{x:.2f}"


# ---------------------------------------------------------------------- amplification


async def amplification(state: TestbedState, messages: int, progress: Progress) -> ScenarioResult:
    servers = _pick(state, 2)
    n = len(servers)
    tag = f"amp{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        room = await shared_room(session, servers, tag, progress)
        if not await settle(session, servers, progress):
            raise TestbedError("federation did not settle after the joins")
        before = await scrape_all(session, servers)

        sent = [0] * n

        async def send_all(i: int) -> None:
            for k in range(messages):
                await room.users[i].send_text(room.room_id, f"{tag} {servers[i].name} {k}")
                sent[i] += 1

        seen: list[int] = [0] * n
        wanted = {f"{tag} {s.name} {k}" for s in servers for k in range(messages)}

        async def all_seen() -> bool:
            views = await asyncio.gather(
                *(u.messages(room.room_id, limit=len(wanted) + 50) for u in room.users)
            )
            for i, events in enumerate(views):
                seen[i] = len(_bodies(events, tag + " ") & wanted)
            return all(c == len(wanted) for c in seen)

        senders = asyncio.gather(*(send_all(i) for i in range(n)))
        while not senders.done():
            progress(f"sent {sum(sent)}/{n * messages}")
            await asyncio.wait([senders], timeout=POLL_SECONDS)
        await senders
        delivered = await wait_for(
            "delivery", all_seen, 60.0 + 0.2 * n * messages, progress,
            lambda: f"seen {sum(seen)}/{n * len(wanted)}",
        )
        settled = await settle(session, servers, progress)
        after = await scrape_all(session, servers)

    expected_each = messages * (n - 1)
    table = [["SERVER", "RECEIVED", "EXPECTED", "FACTOR", "DUPLICATES", "SEEN"]]
    total_received = 0
    total_dups = 0
    per_server_ok = True
    for i, s in enumerate(servers):
        received = int(after[i].total("hs_inbound_pdus_total") - before[i].total("hs_inbound_pdus_total"))
        dups = int(after[i].total("hs_inbound_duplicate_pdus_total")
                   - before[i].total("hs_inbound_duplicate_pdus_total"))
        total_received += received
        total_dups += dups
        per_server_ok &= received == expected_each
        factor = received / expected_each if expected_each else 0.0
        table.append([s.name, str(received), str(expected_each), _fmt(factor), str(dups),
                      f"{seen[i]}/{len(wanted)}"])
    expected = expected_each * n
    missing = sum(len(wanted) - c for c in seen)
    factor = total_received / expected if expected else 0.0
    ok = delivered and settled and per_server_ok and missing == 0 and total_received == expected
    return ScenarioResult("amplification", ok, table, {
        "servers": n, "messages": messages, "received": total_received, "expected": expected,
        "factor": _fmt(factor), "duplicates": total_dups, "missing": missing,
    })


# ---------------------------------------------------------------------- ban


def _ban_in(sync: dict[str, Any], room_id: str, target: str) -> bool:
    rooms = sync.get("rooms") or {}
    for section in ("join", "leave", "invite"):
        room = (rooms.get(section) or {}).get(room_id) or {}
        for part in ("timeline", "state"):
            for e in (room.get(part) or {}).get("events") or []:
                if (e.get("type") == "m.room.member" and e.get("state_key") == target
                        and (e.get("content") or {}).get("membership") == "ban"):
                    return True
    return False


async def ban(state: TestbedState, progress: Progress) -> ScenarioResult:
    servers = _pick(state, 2)
    tag = f"ban{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        # Only the first two servers take part: the banned server has one user in the room.
        room = await shared_room(session, servers[:2], tag, progress)
        admin, target = room.users
        if not await settle(session, servers, progress):
            raise TestbedError("federation did not settle after the join")
        before = (await scrape_all(session, [servers[1]]))[0]
        # The banned user learns of the ban from an incremental /sync (a banned user reads
        # nothing of the room: /messages answers 403).
        since = str((await target.sync()).get("next_batch") or "")
        started = time.monotonic()
        await admin.ban(room.room_id, target.user_id, "testbed ban scenario")

        async def seen() -> bool:
            try:
                if _ban_in(await target.sync(since or None), room.room_id, target.user_id):
                    return True
            except ClientError:
                pass
            try:
                events = await target.messages(room.room_id, limit=50)
            except ClientError:
                return False
            return any(
                e.get("type") == "m.room.member" and e.get("state_key") == target.user_id
                and (e.get("content") or {}).get("membership") == "ban" for e in events
            )

        arrived = await wait_for("ban", seen, 60.0, progress)
        seconds = time.monotonic() - started
        after = (await scrape_all(session, [servers[1]]))[0]
    received = int(after.total("hs_inbound_pdus_total", origin=servers[0].server_name)
                   - before.total("hs_inbound_pdus_total", origin=servers[0].server_name))
    table = [["BANNED SERVER", "BANNED USER", "BAN SEEN", "PDUS RECEIVED", "SECONDS"],
             [servers[1].name, target.user_id, "yes" if arrived else "no", str(received), _fmt(seconds)]]
    return ScenarioResult("ban", arrived, table, {
        "banned_server": servers[1].name, "arrived": "yes" if arrived else "no",
        "pdus_received": received, "seconds": _fmt(seconds),
    })


# ---------------------------------------------------------------------- outage


async def outage(state: TestbedState, messages: int, victim_name: str | None, progress: Progress) -> ScenarioResult:
    servers = _pick(state, 2)
    victim = state.server(victim_name) if victim_name else servers[-1]
    if not victim.managed:
        raise TestbedError("the outage scenario stops and starts a server: it needs the local testbed")
    others = [s for s in servers if s is not victim]
    tag = f"out{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession() as session:
        room = await shared_room(session, servers, tag, progress)
        if not await settle(session, servers, progress):
            raise TestbedError("federation did not settle after the joins")
        victim_user = room.users[servers.index(victim)]
        before = await scrape_all(session, others)
        progress(f"stopping {victim.name}", force=True)
        await asyncio.to_thread(manager.stop_server, state, victim)
        wanted: set[str] = set()
        for s in others:
            user = room.users[servers.index(s)]
            for k in range(messages):
                body = f"{tag} {s.name} {k}"
                await user.send_text(room.room_id, body)
                wanted.add(body)
            progress(f"sent {len(wanted)}/{messages * len(others)} while {victim.name} is down")

        queued_max = 0.0
        backoff_max = 0.0

        async def backed_off() -> bool:
            nonlocal queued_max, backoff_max
            samples = await scrape_all(session, others)
            queued = sum(s.total("hs_outbound_destination_queue_depth", destination=victim.server_name,
                                 kind="pdu") for s in samples)
            backoff = [s.total("hs_outbound_destinations_in_backoff") for s in samples]
            queued_max, backoff_max = max(queued_max, queued), max(backoff_max, sum(backoff))
            return all(b >= 1 for b in backoff)

        await wait_for("backoff", backed_off, 30.0, progress)
        down = await scrape_all(session, others)
        progress(f"starting {victim.name}", force=True)
        restarted = time.monotonic()
        await asyncio.to_thread(manager.start_server, state, victim)
        seen = 0

        async def caught_up() -> bool:
            nonlocal seen
            try:
                seen = len(_bodies(await victim_user.messages(room.room_id, limit=len(wanted) + 50),
                                   tag + " ") & wanted)
            except ClientError:
                return False
            return seen == len(wanted)

        arrived = await wait_for("catch-up", caught_up, 120.0, progress,
                                 lambda: f"{victim.name} has {seen}/{len(wanted)}")
        catch_up_seconds = time.monotonic() - restarted
        settled = await settle(session, servers, progress)
        after = await scrape_all(session, others)

    table = [["SERVER", "QUEUED FOR " + victim.name.upper(), "FAILED TXNS", "IN BACKOFF", "CATCH-UPS",
              "QUEUED AFTER"]]
    failed_total = 0
    for i, s in enumerate(others):
        failed = int(down[i].total("hs_outbound_transactions_total", destination=victim.server_name,
                                   result="failed")
                     - before[i].total("hs_outbound_transactions_total", destination=victim.server_name,
                                       result="failed"))
        failed_total += failed
        table.append([
            s.name,
            str(int(down[i].total("hs_outbound_destination_queue_depth", destination=victim.server_name,
                                  kind="pdu"))),
            str(failed),
            str(int(down[i].total("hs_outbound_destinations_in_backoff"))),
            str(int(after[i].total("hs_outbound_catch_ups_total") - before[i].total("hs_outbound_catch_ups_total"))),
            str(int(after[i].total("hs_outbound_destination_queue_depth", destination=victim.server_name))),
        ])
    missing = len(wanted) - seen
    ok = arrived and settled and missing == 0
    return ScenarioResult("outage", ok, table, {
        "victim": victim.name, "messages": len(wanted), "arrived": seen, "missing": missing,
        "queued_max": int(queued_max), "backoff_max": int(backoff_max), "failed_txns": failed_total,
        "catch_up_seconds": _fmt(catch_up_seconds),
    })


SCENARIOS = ("amplification", "ban", "outage")


async def run_scenario(
    state: TestbedState, name: str, *, messages: int, victim: str | None = None, progress: bool = True
) -> ScenarioResult:
    p = Progress(name, progress)
    try:
        if name == "amplification":
            return await amplification(state, messages, p)
        if name == "ban":
            return await ban(state, p)
        if name == "outage":
            return await outage(state, messages, victim, p)
    except ClientError as e:
        raise TestbedError(f"{name}: {e}") from None
    raise TestbedError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
