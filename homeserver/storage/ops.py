"""The operations store: what ``/health`` and ``/metrics`` read from the database (a
trivial query, the inbox's oldest entry, the outbound queues' depths), each one bounded
query.
"""

from __future__ import annotations

from homeserver.storage.database import Database

# The outbound queue tables, by the kind of what they hold.
_QUEUES = (("pdu", "outbound_pdu_queue"), ("edu", "outbound_edu_queue"))


class OpsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ping(self) -> None:
        """One trivial query: raises if the database does not answer."""
        await self.db.fetchval("SELECT 1")

    async def oldest_inbox_received_ms(self) -> int | None:
        """When the oldest inbox entry was received (None: the inbox is empty)."""
        # The lowest id is the oldest entry (ids are given in order of arrival): one index
        # step, where MIN(received_ts) read every entry, bodies and all, on each scrape.
        oldest = await self.db.fetchval("SELECT received_ts FROM inbox ORDER BY id LIMIT 1")
        return None if oldest is None else int(oldest)

    async def outbound_queue_depths(self, limit: int) -> dict[tuple[str, str], int]:
        """(destination, "pdu" or "edu") -> entries queued, for the ``limit`` busiest
        destinations of each queue."""
        depths: dict[tuple[str, str], int] = {}
        for kind, table in _QUEUES:
            rows = await self.db.fetchall(
                f"SELECT destination, COUNT(*) AS n FROM {table} GROUP BY destination"
                f" ORDER BY n DESC LIMIT {int(limit)}"
            )
            for dest, count in rows:
                depths[(str(dest), kind)] = int(count)
        return depths
