"""Reads of ``timestamp_to_event`` (rooms/timestamps.py): the room's event closest to a
time in one direction, and whether an event sits next to a gap in what we hold.

Only events of the room's timeline count (accepted: not outliers, not rejected, not soft
failed). Served by the index ``events_room_ts`` (schema 0012).
"""

from __future__ import annotations

from homeserver.storage.database import Database

_FORWARD = (
    "SELECT event_id, origin_server_ts FROM events WHERE room_id = ? AND origin_server_ts >= ?"
    " AND outcome = 'accepted' ORDER BY origin_server_ts, stream_ordering LIMIT 1"
)
_BACKWARD = (
    "SELECT event_id, origin_server_ts FROM events WHERE room_id = ? AND origin_server_ts <= ?"
    " AND outcome = 'accepted' ORDER BY origin_server_ts DESC, stream_ordering DESC LIMIT 1"
)


class TimestampStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def closest(self, room_id: str, ts: int, forward: bool) -> tuple[str, int] | None:
        """The event at or after ``ts`` (``forward``), or at or before it, closest to it:
        (event ID, origin_server_ts); None if the room has none we hold."""
        row = await self.db.fetchone(_FORWARD if forward else _BACKWARD, room_id, ts)
        return None if row is None else (str(row[0]), int(row[1]))

    async def next_to_backward_gap(self, event_id: str) -> bool:
        """Whether one of the event's prev events is not in our timeline (missing, or held
        only as an outlier): history right before it may be missing."""
        row = await self.db.fetchone(
            "SELECT 1 FROM event_edges ed LEFT JOIN events e ON e.event_id = ed.prev_event_id"
            " WHERE ed.event_id = ? AND (e.event_id IS NULL OR e.outcome = 'outlier') LIMIT 1",
            event_id,
        )
        return row is not None

    async def next_to_forward_gap(self, room_id: str, event_id: str) -> bool:
        """Whether nothing we hold follows the event although it is not one of the room's
        latest events (a forward extremity): history right after it may be missing."""
        latest = await self.db.fetchone(
            "SELECT 1 FROM forward_extremities WHERE room_id = ? AND event_id = ?", room_id, event_id
        )
        if latest is not None:
            return False
        child = await self.db.fetchone(
            "SELECT 1 FROM event_edges ed JOIN events e ON e.event_id = ed.event_id"
            " WHERE ed.prev_event_id = ? AND e.outcome IN ('accepted', 'soft_failed') LIMIT 1",
            event_id,
        )
        return child is None
