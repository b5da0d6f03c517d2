"""The redaction store: which accepted redactions name an event (the ``redactions`` rows
the persister writes with each redaction event), and the cached verdicts of
rooms/redactions.py on whether each applies.

A row is a candidate until it is judged: rooms/redactions.py deletes the rows of
redactions that can never apply (the verdict is final: it depends only on the two events
and the state before the redaction), and, once an event has a redaction that applies, the
other rows naming it (they change nothing). So the rows left for an event are the one
that applies plus those not judged yet, whatever a peer sends.
"""

from __future__ import annotations

from collections.abc import Sequence

from homeserver.storage.database import Database
from homeserver.util.iters import batch_iter
from homeserver.util.lru import LruCache

CHUNK = 500
VERDICT_CACHE_SIZE = 10_000


class RedactionStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Redaction event ID -> whether it applies to its target (rooms/redactions.py): the
        # verdict depends only on the two events and the state before the redaction.
        self.verdicts: LruCache[str, bool] = LruCache(VERDICT_CACHE_SIZE)

    async def candidates_of(self, target_ids: Sequence[str], per_target: int) -> list[tuple[int, str, str]]:
        """(stream ordering, target event ID, redaction event ID) of the first
        ``per_target`` accepted redactions (in stream order) naming each of ``target_ids``
        from the target's own room; in no particular order. A redaction from another room
        is never one of them."""
        out: list[tuple[int, str, str]] = []
        for chunk in batch_iter(target_ids, CHUNK):
            cond, args = self.db.dialect.in_list("r.redacts", chunk)
            rows = await self.db.fetchall(
                "SELECT so, redacts, event_id FROM ("
                " SELECT e.stream_ordering AS so, r.redacts AS redacts, r.event_id AS event_id,"
                " ROW_NUMBER() OVER (PARTITION BY r.redacts ORDER BY e.stream_ordering) AS n"
                " FROM redactions r"
                " JOIN events e ON e.event_id = r.event_id"
                " JOIN events t ON t.event_id = r.redacts"
                f" WHERE {cond} AND e.outcome = ? AND e.room_id = t.room_id"
                ") ranked WHERE n <= ?",
                *args, "accepted", per_target,
            )
            out.extend((int(r[0]), r[1], r[2]) for r in rows)
        return out

    async def forget(self, redaction_ids: Sequence[str]) -> None:
        """Drop the rows of redactions that can never apply to the event they name."""
        for chunk in batch_iter(redaction_ids, CHUNK):
            cond, args = self.db.dialect.in_list("event_id", chunk)
            await self.db.execute(f"DELETE FROM redactions WHERE {cond}", *args)

    async def keep_only(self, target_id: str, redaction_id: str) -> None:
        """Drop every row naming ``target_id`` but that of ``redaction_id`` (the redaction
        that applies to it: the others change nothing)."""
        await self.db.execute(
            "DELETE FROM redactions WHERE redacts = ? AND event_id <> ?", target_id, redaction_id
        )
