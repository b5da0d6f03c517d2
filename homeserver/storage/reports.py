"""Reports users send about events and rooms, kept for operators (``homeserver reports list``)."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    user_id: str
    room_id: str
    event_id: str | None
    reason: str | None
    score: int | None
    received_ts: int


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, user_id: str, room_id: str, event_id: str | None, reason: str | None,
                  score: int | None, received_ts: int) -> int:
        """Store a report; return its ID."""
        async with self.db.transaction() as conn:
            report_id = await conn.fetchval(
                "INSERT INTO reports (user_id, room_id, event_id, reason, score, received_ts)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                user_id, room_id, event_id, reason, score, received_ts,
            )
        return int(report_id)

    async def list(self, *, limit: int = 100, before_id: int | None = None) -> list[Report]:
        """The newest reports first (those with an ID below ``before_id``), at most ``limit``."""
        rows = await self.db.fetchall(
            "SELECT id, user_id, room_id, event_id, reason, score, received_ts FROM reports"
            " WHERE id < ? ORDER BY id DESC LIMIT ?",
            before_id if before_id is not None else 2**62, limit,
        )
        return [Report(int(r[0]), r[1], r[2], r[3], r[4], None if r[5] is None else int(r[5]), int(r[6]))
                for r in rows]

    async def count_since(self, user_id: str, since_ts: int) -> int:
        """How many reports ``user_id`` sent since ``since_ts`` (a per-user cap)."""
        return int(await self.db.fetchval(
            "SELECT COUNT(*) FROM reports WHERE user_id = ? AND received_ts >= ?", user_id, since_ts,
        ))
