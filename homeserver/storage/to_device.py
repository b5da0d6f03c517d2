"""The to-device store: each device's inbox of send-to-device messages, the client txnIds
already acted on, and the inbound ``m.direct_to_device`` EDUs already delivered
(storage/schema/0014_to_device_and_key_backup.sql).

Guarantees: positions come from one counter row taken first in the writing transaction,
so they are committed in order (a reader that has seen position P never later meets a
message at or below P); a (user, device, txnId) and an (origin, message_id) have one
effect, recorded in the transaction that stores the messages; only devices that exist get
messages; a device keeps at most ``max_per_device`` messages (the oldest go first, and are
counted in the answer). Stateless apart from the database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Connection, Database

ALL_DEVICES = "*"
# Rows kept to make a client retry or a remote EDU retry a no-op.
TXN_RETENTION_MS = 24 * 3600 * 1000
RECEIVED_RETENTION_MS = 7 * 24 * 3600 * 1000
DEFAULT_MAX_PER_DEVICE = 10_000


@dataclass(frozen=True, slots=True)
class Message:
    """One message for ``user_id``'s ``device_id`` (or ALL_DEVICES: each of their devices)."""

    user_id: str
    device_id: str
    content: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Delivered:
    stream_id: int
    sender: str
    type: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stored:
    """What a write did: the (user, device) pairs that got a message, and how many older
    messages were dropped to keep queues within bounds."""

    devices: frozenset[tuple[str, str]]
    dropped: int


def _encode(content: Mapping[str, Any]) -> str:
    return json.dumps(dict(content), separators=(",", ":"), ensure_ascii=False)


def _content(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


class ToDeviceStore:
    def __init__(self, db: Database, max_per_device: int = DEFAULT_MAX_PER_DEVICE) -> None:
        self.db = db
        self.max_per_device = max_per_device

    # ------------------------------------------------------------------ writes

    async def claim_txn(self, conn: Connection, user_id: str, device_id: str, txn_id: str, now_ms: int) -> bool:
        """Record a client's txnId inside ``conn``'s transaction; False if it was seen."""
        await conn.execute("DELETE FROM to_device_txns WHERE created_ts < ?", now_ms - TXN_RETENTION_MS)
        changed = await conn.execute(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
            user_id, device_id, txn_id, now_ms,
        )
        return changed > 0

    async def claim_received(self, conn: Connection, origin: str, message_id: str, now_ms: int) -> bool:
        """Record an inbound EDU's (origin, message_id) inside ``conn``'s transaction;
        False if it was delivered before."""
        await conn.execute("DELETE FROM to_device_received WHERE received_ts < ?", now_ms - RECEIVED_RETENTION_MS)
        changed = await conn.execute(
            "INSERT INTO to_device_received (origin, message_id, received_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (origin, message_id) DO NOTHING",
            origin, message_id, now_ms,
        )
        return changed > 0

    async def add(
        self, conn: Connection, sender: str, event_type: str, message_id: str, messages: Sequence[Message]
    ) -> Stored:
        """Store ``messages`` from ``sender`` for local devices, inside ``conn``'s
        transaction: ALL_DEVICES is each device the user has now; a device that does not
        exist gets nothing."""
        rows: list[tuple[str, str, str]] = []
        for m in messages:
            found = await self._existing(conn, m.user_id, m.device_id)
            encoded = _encode(m.content)
            rows.extend((m.user_id, d, encoded) for d in found)
        if not rows:
            return Stored(frozenset(), 0)
        top = int(await conn.fetchval(
            "INSERT INTO to_device_stream (id, position) VALUES (1, ?) ON CONFLICT (id)"
            " DO UPDATE SET position = to_device_stream.position + excluded.position RETURNING position",
            len(rows),
        ))
        first = top - len(rows) + 1
        await conn.executemany(
            "INSERT INTO to_device_inbox (user_id, device_id, stream_id, sender, event_type, content, message_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(u, d, first + i, sender, event_type, c, message_id) for i, (u, d, c) in enumerate(rows)],
        )
        devices = frozenset((u, d) for u, d, _ in rows)
        dropped = 0
        for user_id, device_id in devices:
            dropped += await self._trim(conn, user_id, device_id)
        return Stored(devices, dropped)

    async def _existing(self, conn: Connection, user_id: str, device_id: str) -> list[str]:
        if device_id == ALL_DEVICES:
            rows = await conn.fetchall("SELECT device_id FROM devices WHERE user_id = ? ORDER BY device_id", user_id)
        else:
            rows = await conn.fetchall(
                "SELECT device_id FROM devices WHERE user_id = ? AND device_id = ?", user_id, device_id
            )
        return [str(r[0]) for r in rows]

    async def _trim(self, conn: Connection, user_id: str, device_id: str) -> int:
        """Drop the oldest messages of a device past ``max_per_device``."""
        bound = await conn.fetchval(
            "SELECT stream_id FROM to_device_inbox WHERE user_id = ? AND device_id = ?"
            " ORDER BY stream_id DESC LIMIT 1 OFFSET ?",
            user_id, device_id, self.max_per_device,
        )
        if bound is None:
            return 0
        return await conn.execute(
            "DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
            user_id, device_id, int(bound),
        )

    # ------------------------------------------------------------------ reads and acknowledgements

    async def pending(self, user_id: str, device_id: str, after: int, limit: int) -> list[Delivered]:
        """The device's messages past position ``after``, oldest first, at most ``limit``."""
        rows = await self.db.fetchall(
            "SELECT stream_id, sender, event_type, content FROM to_device_inbox"
            " WHERE user_id = ? AND device_id = ? AND stream_id > ? ORDER BY stream_id LIMIT ?",
            user_id, device_id, after, limit,
        )
        return [Delivered(int(r[0]), r[1], r[2], _content(r[3])) for r in rows]

    async def acknowledge(self, user_id: str, device_id: str, upto: int) -> int:
        """The device has received everything up to position ``upto``: delete it."""
        if upto <= 0:
            return 0
        return await self.db.execute(
            "DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ? AND stream_id <= ?",
            user_id, device_id, upto,
        )

    async def queue_length(self, user_id: str, device_id: str) -> int:
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM to_device_inbox WHERE user_id = ? AND device_id = ?", user_id, device_id
        ))
