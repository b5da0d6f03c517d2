"""The redaction store: which accepted redactions name an event (the ``redactions`` rows
the persister writes with each redaction event), and the cached verdicts of
rooms/redactions.py on whether each applies.
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

    async def accepted_redactions_of(self, target_ids: Sequence[str]) -> list[tuple[int, str, str]]:
        """(stream ordering, target event ID, redaction event ID) of every accepted
        redaction naming one of ``target_ids``, in no particular order."""
        out: list[tuple[int, str, str]] = []
        for chunk in batch_iter(target_ids, CHUNK):
            cond, args = self.db.dialect.in_list("r.redacts", chunk)
            rows = await self.db.fetchall(
                "SELECT e.stream_ordering, r.redacts, r.event_id FROM redactions r"
                " JOIN events e ON e.event_id = r.event_id"
                f" WHERE {cond} AND e.outcome = ?",
                *args, "accepted",
            )
            out.extend((int(r[0]), r[1], r[2]) for r in rows)
        return out
