"""The relations store: the ``event_relations`` rows the persister writes with each
accepted event that relates to another (``events/relations.py``), and the look-ups of
``/relations``, ``/threads`` and the bundled aggregations (``rooms/relations.py``).

Also the write side of the search index (``event_search``, read by storage/search.py):
both are written in the transaction (or the one PostgreSQL statement) that stores the
event, so an event is indexed exactly when it is stored accepted.

A child that a redaction names (a row in ``redactions``: one that applies, or one not
judged yet) is left out of every read here: a redacted event loses its ``m.relates_to``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.event import Event
from homeserver.events.relations import REFERENCE, REPLACE, THREAD, event_relation, searchable_of
from homeserver.storage.database import Connection, Database
from homeserver.util.iters import batch_iter

CHUNK = 200
# How deep ``recurse`` follows relations of relations.
MAX_DEPTH = 3

# The relation types bundled into served events (rooms/relations.py).
BUNDLED_KINDS = (REPLACE, THREAD, REFERENCE)
_NOT_REDACTED = "NOT EXISTS (SELECT 1 FROM redactions x WHERE x.redacts = r.event_id)"

_INSERT_RELATION = (
    "INSERT INTO event_relations (event_id, room_id, parent_id, rel_type, event_type, sender, stream_ordering)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_INSERT_SEARCH = {
    "sqlite": "INSERT INTO event_search (event_id, room_id, sender, key, stream_ordering, value)"
              " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "postgres": "INSERT INTO event_search (event_id, room_id, sender, key, stream_ordering, vector)"
                " VALUES (?, ?, ?, ?, ?, to_tsvector('simple', ?)) ON CONFLICT DO NOTHING",
}

# PostgreSQL's one-statement write (storage/event_writes.py): the two index rows as
# data-modifying CTEs that insert nothing when their key argument is NULL. Arguments:
# ``EventIndex.one_statement_args``.
PG_INDEX_CTES = (
    " rl AS (INSERT INTO event_relations"
    " (event_id, room_id, parent_id, rel_type, event_type, sender, stream_ordering)"
    " SELECT v.* FROM (SELECT ?::text AS a, ?::text AS b, ?::text AS c, ?::text AS d, ?::text AS e,"
    " ?::text AS f, ?::bigint AS g) v WHERE v.c IS NOT NULL ON CONFLICT DO NOTHING),"
    " sx AS (INSERT INTO event_search (event_id, room_id, sender, key, stream_ordering, vector)"
    " SELECT v.a, v.b, v.c, v.d, v.e, to_tsvector('simple', v.f) FROM (SELECT ?::text AS a, ?::text AS b,"
    " ?::text AS c, ?::text AS d, ?::bigint AS e, ?::text AS f) v WHERE v.d IS NOT NULL ON CONFLICT DO NOTHING),"
)


class EventIndex:
    """The index rows of one event: its relation and its searchable text."""

    def __init__(self, db: Database) -> None:
        self._insert_search = _INSERT_SEARCH[db.dialect.name]

    async def write(self, conn: Connection, event: Event, ordering: int) -> None:
        """Index an accepted event (nothing when it neither relates nor is searchable)."""
        relation = event_relation(event)
        if relation is not None:
            await conn.write(
                _INSERT_RELATION, event.event_id, event.room_id, relation.parent_id, relation.rel_type,
                event.type, event.sender, ordering,
            )
        found = searchable_of(event)
        if found is not None:
            await conn.write(
                self._insert_search, event.event_id, event.room_id, event.sender, found[0], ordering, found[1]
            )

    @staticmethod
    def one_statement_args(event: Event, ordering: int, accepted: bool) -> tuple[Any, ...]:
        """The arguments of ``PG_INDEX_CTES`` (NULL keys when there is nothing to index)."""
        relation = event_relation(event) if accepted else None
        found = searchable_of(event) if accepted else None
        return (
            event.event_id, event.room_id, relation.parent_id if relation else None,
            relation.rel_type if relation else None, event.type, event.sender, ordering,
            event.event_id, event.room_id, event.sender, found[0] if found else None, ordering,
            found[1] if found else None,
        )


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    root_id: str
    count: int
    latest_id: str
    participated: bool


class RelationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def children(
        self, room_id: str, parent_id: str, *, rel_type: str | None, event_type: str | None,
        after: int, upto: int, limit: int, newest_first: bool, recurse: bool = False,
    ) -> list[tuple[str, int]]:
        """(event ID, stream ordering) of the events of ``room_id`` relating to
        ``parent_id`` (with ``recurse``, also to those, up to ``MAX_DEPTH`` levels), with
        ``after < ordering <= upto``, filtered by relation and event type, at most ``limit``."""
        filters = ""
        args: list[Any] = []
        if rel_type is not None:
            filters += " AND r.rel_type = ?"
            args.append(rel_type)
        if event_type is not None:
            filters += " AND r.event_type = ?"
            args.append(event_type)
        order = "DESC" if newest_first else "ASC"
        if not recurse:
            rows = await self.db.fetchall(
                "SELECT r.event_id, r.stream_ordering FROM event_relations r"
                f" WHERE r.parent_id = ? AND r.room_id = ?{filters} AND {_NOT_REDACTED}"
                f" AND r.stream_ordering > ? AND r.stream_ordering <= ? ORDER BY r.stream_ordering {order} LIMIT ?",
                parent_id, room_id, *args, after, upto, limit,
            )
        else:
            # The filters apply at every level: an event related only through one that does
            # not match is not reached (the spec's rule for recurse).
            rows = await self.db.fetchall(
                "WITH RECURSIVE tree (event_id, depth) AS ("
                f" SELECT r.event_id, 1 FROM event_relations r WHERE r.parent_id = ? AND r.room_id = ?{filters}"
                " UNION ALL"
                " SELECT r.event_id, tree.depth + 1 FROM event_relations r JOIN tree ON r.parent_id = tree.event_id"
                f" WHERE tree.depth < ? AND r.room_id = ?{filters})"
                " SELECT DISTINCT r.event_id, r.stream_ordering FROM tree JOIN event_relations r"
                f" ON r.event_id = tree.event_id WHERE {_NOT_REDACTED}"
                f" AND r.stream_ordering > ? AND r.stream_ordering <= ? ORDER BY r.stream_ordering {order} LIMIT ?",
                parent_id, room_id, *args, MAX_DEPTH, room_id, *args, after, upto, limit,
            )
        return [(r[0], int(r[1])) for r in rows]

    async def related_kinds(
        self, parent_ids: Sequence[str], kinds: Sequence[str] = BUNDLED_KINDS,
    ) -> dict[str, set[str]]:
        """For each of ``parent_ids`` something relates to, the relation types found among
        ``kinds`` (by default those bundled: the reactions (``m.annotation``) a popular
        event gathers by the thousand are not read for every page that shows it)."""
        out: dict[str, set[str]] = {}
        for chunk in batch_iter(parent_ids, CHUNK):
            cond, args = self.db.dialect.in_list("r.parent_id", chunk)
            kind_cond, kind_args = self.db.dialect.in_list("r.rel_type", list(kinds))
            rows = await self.db.fetchall(
                f"SELECT DISTINCT r.parent_id, r.rel_type FROM event_relations r WHERE {cond} AND {kind_cond}"
                f" AND {_NOT_REDACTED}",
                *args, *kind_args,
            )
            for parent, rel_type in rows:
                out.setdefault(parent, set()).add(rel_type)
        return out

    async def threads_of(
        self, root_ids: Sequence[str], user_id: str, not_senders: Sequence[str] = (),
    ) -> dict[str, ThreadSummary]:
        """The thread summary of each root: replies (same room; none by ``not_senders``,
        those the user ignores), the latest, and whether ``user_id`` replied (the caller
        adds whether they sent the root)."""
        out: dict[str, ThreadSummary] = {}
        skip, skip_args = self.db.dialect.not_in_list("r.sender", list(not_senders)) if not_senders else ("1 = 1", [])
        for chunk in batch_iter(root_ids, CHUNK):
            cond, args = self.db.dialect.in_list("r.parent_id", chunk)
            rows = await self.db.fetchall(
                "SELECT a.parent_id, a.n, a.mine, l.event_id FROM ("
                " SELECT r.parent_id AS parent_id, COUNT(*) AS n, MAX(r.stream_ordering) AS latest,"
                " MAX(CASE WHEN r.sender = ? THEN 1 ELSE 0 END) AS mine"
                " FROM event_relations r JOIN events p ON p.event_id = r.parent_id AND p.room_id = r.room_id"
                f" WHERE {cond} AND r.rel_type = ? AND {skip} AND {_NOT_REDACTED} GROUP BY r.parent_id"
                ") a JOIN event_relations l ON l.parent_id = a.parent_id AND l.stream_ordering = a.latest"
                " AND l.rel_type = ?",
                user_id, *args, THREAD, *skip_args, THREAD,
            )
            for parent, count, mine, latest in rows:
                out[parent] = ThreadSummary(parent, int(count), latest, bool(mine))
        return out

    async def latest_edits(self, parent_ids: Sequence[str], per_parent: int = 4) -> list[tuple[str, str]]:
        """(parent ID, edit event ID) of the newest ``m.replace`` edits of each parent by
        its own sender, of its own type, in its room (newest first by origin_server_ts,
        then event ID, as the spec orders them)."""
        out: list[tuple[str, str]] = []
        for chunk in batch_iter(parent_ids, CHUNK):
            cond, args = self.db.dialect.in_list("r.parent_id", chunk)
            rows = await self.db.fetchall(
                "SELECT parent_id, event_id FROM ("
                " SELECT r.parent_id AS parent_id, r.event_id AS event_id, ROW_NUMBER() OVER ("
                "  PARTITION BY r.parent_id ORDER BY e.origin_server_ts DESC, r.event_id DESC) AS n"
                " FROM event_relations r"
                " JOIN events p ON p.event_id = r.parent_id"
                " JOIN events e ON e.event_id = r.event_id"
                f" WHERE {cond} AND r.rel_type = 'm.replace' AND {_NOT_REDACTED}"
                " AND p.room_id = r.room_id AND p.sender = r.sender AND p.type = r.event_type"
                ") ranked WHERE n <= ? ORDER BY parent_id, n",
                *args, per_parent,
            )
            out.extend((r[0], r[1]) for r in rows)
        return out

    async def references(self, parent_ids: Sequence[str], per_parent: int) -> list[tuple[str, str]]:
        """(parent ID, event ID) of the first ``per_parent`` ``m.reference`` relations of
        each parent (stream order)."""
        out: list[tuple[str, str]] = []
        for chunk in batch_iter(parent_ids, CHUNK):
            cond, args = self.db.dialect.in_list("r.parent_id", chunk)
            rows = await self.db.fetchall(
                "SELECT parent_id, event_id FROM ("
                " SELECT r.parent_id AS parent_id, r.event_id AS event_id, r.stream_ordering AS so,"
                " ROW_NUMBER() OVER (PARTITION BY r.parent_id ORDER BY r.stream_ordering) AS n"
                " FROM event_relations r JOIN events p ON p.event_id = r.parent_id AND p.room_id = r.room_id"
                f" WHERE {cond} AND r.rel_type = 'm.reference' AND {_NOT_REDACTED}"
                ") ranked WHERE n <= ? ORDER BY parent_id, so",
                *args, per_parent,
            )
            out.extend((r[0], r[1]) for r in rows)
        return out

    async def threads(
        self, room_id: str, *, before: int | None, limit: int, participant: str | None, upto: int | None = None,
    ) -> list[tuple[str, int]]:
        """(root ID, latest reply's ordering) of the room's threads, by latest reply,
        newest first, latest reply below ``before`` (replies after ``upto`` not counted);
        with ``participant``, only the threads they started or replied to."""
        having = " HAVING MAX(r.stream_ordering) < ?" if before is not None else ""
        args: list[Any] = [THREAD, room_id]
        if upto is not None:
            args.append(upto)
        mine = ""
        if participant is not None:
            mine = (
                " AND (EXISTS (SELECT 1 FROM events p WHERE p.event_id = r.parent_id AND p.sender = ?)"
                " OR EXISTS (SELECT 1 FROM event_relations t WHERE t.parent_id = r.parent_id"
                " AND t.rel_type = r.rel_type AND t.sender = ?))"
            )
            args += [participant, participant]
        if before is not None:
            args.append(before)
        rows = await self.db.fetchall(
            "SELECT r.parent_id, MAX(r.stream_ordering) AS latest FROM event_relations r"
            f" WHERE r.rel_type = ? AND r.room_id = ?{' AND r.stream_ordering <= ?' if upto is not None else ''}"
            f" AND {_NOT_REDACTED}{mine}"
            f" GROUP BY r.parent_id{having} ORDER BY latest DESC LIMIT ?",
            *args, limit,
        )
        return [(r[0], int(r[1])) for r in rows]
