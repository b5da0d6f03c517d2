"""The one checker of steps 1-3 of the spec's "Checks performed on receipt of a PDU":
format (else dropped), signatures through the key cache (else dropped), content hash
(else used redacted). Inbound /send, remote joins, backfill and the membership
handshakes all check through it.

Those steps need no room state, so they can run early: in the helper processes for a
large claimed batch (``check_in_helpers``, see ``pool.py``), or one entry ahead while the
previous one waits on the database (``check_ahead``); ``checked`` collects the verdict
from wherever it was computed, else checks inline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from homeserver.crypto.keyring import KeyNotFoundError, KeyRing
from homeserver.events.errors import EventError, EventFormatError, SignatureError
from homeserver.events.event import Event
from homeserver.events.format import check_pdu_format
from homeserver.events.hashes import compute_event_id
from homeserver.events.redaction import redact
from homeserver.events.signing import (
    HashCheck,
    check_content_hash,
    required_signers,
    verify_event_signatures,
)
from homeserver.events.versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.metrics import Metrics
from homeserver.rooms.checks.pool import CheckItem, CheckPool, Verdict

log = logging.getLogger(__name__)

# Checks that may run ahead at once (a bound on memory and on wasted work).
CHECK_AHEAD_LIMIT = 64
# A batch with at least this many PDUs has steps 1-3 run in the check helpers, in chunks
# of POOL_CHUNK (smaller batches are checked inline: no process is worth it).
POOL_MIN_BATCH = 16
POOL_CHUNK = 25


class Dropped(Exception):
    """The PDU fails the format or signature checks, or cannot be placed: not stored."""


class Candidate(Protocol):
    """A PDU waiting to be processed (an inbox entry): its ID, room version and JSON text."""

    @property
    def event_id(self) -> str | None: ...

    @property
    def room_version(self) -> str | None: ...

    @property
    def raw(self) -> str: ...

    @property
    def body(self) -> dict[str, Any]: ...


class PduChecker:
    """Steps 1-3 of the checks on receipt, inline, ahead, or in the helper processes."""

    def __init__(
        self, keyring: KeyRing, metrics: Metrics, *, processes: int = 0, cache_size: int = 10_000
    ) -> None:
        self._keyring = keyring
        self._metrics = metrics
        self._cache_size = cache_size
        # event ID -> its steps 1-3 running ahead (see check_ahead).
        self._ahead: dict[str, asyncio.Task[Event]] = {}
        # event ID -> (its helper chunk's verdicts, its index in the chunk).
        self._pool = CheckPool(processes)
        self._pooled: OrderedDict[str, tuple[asyncio.Task[list[Verdict]], int]] = OrderedDict()

    def close(self) -> None:
        """Stop the check helpers."""
        for task, _ in self._pooled.values():
            task.cancel()
        self._pooled.clear()
        self._pool.close()

    # ------------------------------------------------------------------ steps 1-3

    async def check(self, pdu: dict[str, Any], version: RoomVersion, event_id: str) -> Event:
        """Steps 1-3, inline; Dropped when the PDU fails step 1 or 2."""
        # 1. Format, else dropped.
        try:
            check_pdu_format(pdu, version)
        except EventFormatError as e:
            raise Dropped(f"format: {e}") from None
        # 2. Signatures of every required signer, else dropped.
        keys = await self.signer_keys(pdu, version)
        try:
            verify_event_signatures(pdu, version, keys)
        except SignatureError as e:
            raise Dropped(f"signature: {e}") from None
        # 3. Content hash, else the event is used redacted.
        check, used = check_content_hash(pdu, version)
        event = Event.from_pdu(used, version, event_id=event_id)
        if check is HashCheck.MISMATCH:
            event = dataclasses.replace(event, redacted_on_receipt=True)
        return event

    async def signer_keys(self, pdu: dict[str, Any], version: RoomVersion | None = None) -> dict[str, dict[str, Any]]:
        """The verify keys, valid when the event was sent (from room 5: ``valid_until_ts``
        is enforced only there), of every required signer's ed25519 signatures (keys that
        cannot be had are left out: the check then fails)."""
        keys: dict[str, dict[str, Any]] = {}
        sigs = pdu.get("signatures")
        ts = pdu.get("origin_server_ts")
        if not isinstance(sigs, dict) or not isinstance(ts, int):
            return keys
        if version is not None and not version.enforce_key_validity:
            ts = 0  # rooms 1-4: any key the server has published counts
        for server in required_signers(pdu, version):
            by_id = sigs.get(server)
            if not isinstance(by_id, dict):
                continue
            for key_id in by_id:
                if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                    continue
                try:
                    key = await self._keyring.get_verify_key(server, key_id, valid_at_ms=ts)
                except KeyNotFoundError:
                    continue
                keys.setdefault(server, {})[key_id] = key
        return keys

    async def check_all(self, room_id: str, version: RoomVersion, pdus: Iterable[Any]) -> dict[str, Event]:
        """Steps 1-3 of a batch of PDUs fetched from another server: the events of
        ``room_id`` that pass, by event ID (in the order given); the others are left out."""
        checked: dict[str, Event] = {}
        for pdu in pdus:
            if not isinstance(pdu, dict) or pdu.get("room_id", room_id) != room_id:
                continue
            try:
                event_id = compute_event_id(pdu, version)
                if event_id in checked:
                    continue
                event = await self.check(pdu, version, event_id)
            except (Dropped, EventError) as e:
                log.info("fetched event dropped", extra={"room_id": room_id, "reason": str(e)[:200]})
                continue
            if event.room_id == room_id:
                checked[event_id] = event
        return checked

    # ------------------------------------------------------------------ running early

    def pending(self, event_id: str) -> bool:
        """Whether the checks of ``event_id`` are running ahead or in the helpers."""
        return event_id in self._ahead or event_id in self._pooled

    async def checked(self, pdu: dict[str, Any], version: RoomVersion, event_id: str) -> Event:
        """Steps 1-3: their verdict from the helpers or from a check run ahead, else run now."""
        pooled = self._pooled.pop(event_id, None)
        ahead = self._ahead.pop(event_id, None)
        if pooled is not None:
            if ahead is not None:
                ahead.cancel()
            return await self._pooled_event(pooled, pdu, version, event_id)
        return await (ahead if ahead is not None else self.check(pdu, version, event_id))

    def check_ahead(self, pdu: dict[str, Any], version: RoomVersion, event_id: str) -> None:
        """Start steps 1-3 of a PDU that comes next, so they run while the one before it
        waits on the database."""
        if self.pending(event_id):
            return
        task = asyncio.create_task(self.check(pdu, version, event_id))
        # A check that nobody collects (the entry turned out a duplicate) must not warn.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._ahead[event_id] = task
        while len(self._ahead) > CHECK_AHEAD_LIMIT:
            stale = self._ahead.pop(next(iter(self._ahead)))
            stale.cancel()

    def check_in_helpers(self, fresh: Sequence[Candidate]) -> None:
        """Start steps 1-3 of a large batch in the helper processes (a small batch, or
        no helpers configured: nothing; each is then checked when it comes)."""
        if not self._pool.enabled or len(fresh) < POOL_MIN_BATCH:
            return
        for i in range(0, len(fresh), POOL_CHUNK):
            chunk = fresh[i : i + POOL_CHUNK]
            task = asyncio.create_task(self._pool_check(chunk))
            # Verdicts nobody collects (the entry turned out a duplicate) must not warn.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            for n, entry in enumerate(chunk):
                self._pooled[entry.event_id] = (task, n)  # type: ignore[index]
        while len(self._pooled) > self._cache_size:
            self._pooled.popitem(last=False)

    async def _pool_check(self, entries: Sequence[Candidate]) -> list[Verdict]:
        items: list[CheckItem] = []
        for n, entry in enumerate(entries):
            if n % 5 == 4:
                await asyncio.sleep(0)  # parsing a chunk at once would hold the loop
            keys = await self.signer_keys(entry.body, KNOWN_ROOM_VERSIONS.get(entry.room_version or ""))
            raw = {s: {k: bytes(v.encode()) for k, v in by_id.items()} for s, by_id in keys.items()}
            items.append((entry.raw, entry.room_version or "", raw))
        verdicts = await self._pool.check(items)
        self._metrics.inbound_helper_checks.inc(len(verdicts))
        return verdicts

    async def _pooled_event(
        self, pooled: tuple[asyncio.Task[list[Verdict]], int], pdu: dict[str, Any], version: RoomVersion,
        event_id: str,
    ) -> Event:
        task, index = pooled
        try:
            verdict, detail = (await task)[index]
        except asyncio.CancelledError:
            if task.cancelled():  # the chunk was given up (shutdown), not this task
                return await self.check(pdu, version, event_id)
            raise
        except Exception:
            log.warning("check helpers failed; checking inline", exc_info=True)
            return await self.check(pdu, version, event_id)
        if verdict in ("format", "signature"):
            raise Dropped(f"{verdict}: {detail}")
        if verdict == "redact":
            return dataclasses.replace(
                Event.from_pdu(redact(pdu, version), version, event_id=event_id), redacted_on_receipt=True
            )
        return Event.from_pdu(pdu, version, event_id=event_id)

