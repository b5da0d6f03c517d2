"""The search store: full-text look-ups over ``event_search`` (written with each accepted
searchable event by the persister, storage/relations.py's ``EventIndex``).

The engines differ, and the store picks its statements once, by ``db.dialect``: SQLite
matches with FTS5 (``event_search_fts``, ranked by ``bm25``), PostgreSQL with a
``tsvector`` under a GIN index (ranked by ``ts_rank_cd``). Both take the words of the
search term (``search_words``) as prefixes, all of which must match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Connection, Database

MAX_WORDS = 16
# Rank ordering ranks the newest RANK_WINDOW matches (a word found in most messages would
# otherwise cost a ranking of all of them per page); count stops at COUNT_CAP.
RANK_WINDOW = 2000
COUNT_CAP = 2000
# PostgreSQL: the newest events looked at first (``SearchStore._newest``), and the share of
# them a word must be in to count as common (walked newest first rather than taken from GIN).
PROBE = 500
COMMON_ONE_IN = 20
_WORD = re.compile(r"\w+", re.UNICODE)


def search_words(term: str) -> list[str]:
    """The words of a search term (lower case, at most ``MAX_WORDS``, no duplicates).

    Lower-cased a character at a time, as PostgreSQL does, and kept to word characters:
    ``"İ".lower()`` is ``i`` and a combining dot (not a word character, which the
    PostgreSQL query, built from words of word characters only, would refuse), and ``"Σ"`` at a word's
    end would become a final sigma, which the index does not hold."""
    words = ("".join(_WORD.findall("".join(c.lower() for c in w))) for w in _WORD.findall(term))
    return list(dict.fromkeys(w for w in words if w))[:MAX_WORDS]


@dataclass(frozen=True, slots=True)
class Hit:
    event_id: str
    room_id: str
    sender: str
    stream_ordering: int
    rank: float


@dataclass(frozen=True, slots=True)
class SearchQuery:
    room_ids: Sequence[str]
    words: Sequence[str]
    keys: Sequence[str]
    senders: Sequence[str] | None = None
    not_senders: Sequence[str] = ()


class SearchStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._postgres = db.dialect.name == "postgres"

    def _where(self, q: SearchQuery, *, with_match: bool = True) -> tuple[str, str, list[Any]]:
        """The FROM clause, the conditions and their arguments of a query (``with_match``
        False: all but the text match; PostgreSQL only)."""
        args: list[Any] = []
        if self._postgres:
            source = "event_search s"
            # The query is written into the statement (its words are \w+ only: no quote, no
            # operator), so PostgreSQL plans each one for its words.
            match = f"s.vector @@ {self._tsquery(q.words)}"
        else:
            source = "event_search_fts f JOIN event_search s ON s.stream_ordering = f.rowid"
            match = "event_search_fts MATCH ?"
            args.append(" AND ".join('"' + w.replace('"', '""') + '"*' for w in q.words))
        conds = [match] if with_match else []
        for column, values in (("s.room_id", q.room_ids), ("s.key", q.keys)):
            cond, more = self.db.dialect.in_list(column, list(values))
            conds.append(cond)
            args += more
        if q.senders is not None:
            cond, more = self.db.dialect.in_list("s.sender", list(q.senders))
            conds.append(cond)
            args += more
        if q.not_senders:
            cond, more = self.db.dialect.not_in_list("s.sender", list(q.not_senders))
            conds.append(cond)
            args += more
        conds.append("NOT EXISTS (SELECT 1 FROM redactions x WHERE x.redacts = s.event_id)")
        return source, " AND ".join(conds), args

    @staticmethod
    def _tsquery(words: Sequence[str]) -> str:
        if not all(_WORD.fullmatch(w) for w in words):
            raise ValueError("search words must be \\w+")
        return "to_tsquery('simple', '" + " & ".join(f"{w}:*" for w in words) + "')"

    async def _fetch(self, sql: str, args: Sequence[Any], *, from_gin: bool) -> list[tuple[Any, ...]]:
        """Run a query; ``from_gin`` (PostgreSQL): with the matches taken from the GIN index
        (a bitmap scan). The planner underrates the cost of checking each row's tsvector,
        so for a word that few events contain it would rather walk a b-tree or the table
        and check every row it passes."""
        if not (self._postgres and from_gin):
            return await self.db.fetchall(sql, *args)
        conn: Connection
        async with self.db.transaction() as conn:
            await conn.execute("SET LOCAL enable_seqscan = off")
            await conn.execute("SET LOCAL enable_indexscan = off")
            rows: list[tuple[Any, ...]] = await conn.fetchall(sql, *args)
        return rows

    async def _newest(self, q: SearchQuery, before: int | None) -> list[tuple[Any, ...]]:
        """PostgreSQL: the matches among the newest ``PROBE`` searchable events of the
        rooms (below ``before``), newest first: enough for a common word's page, and what
        tells a common word from a rare one."""
        _, where, args = self._where(q, with_match=False)
        if before is not None:
            where += " AND s.stream_ordering < ?"
            args.append(before)
        return await self.db.fetchall(
            "SELECT w.event_id, w.room_id, w.sender, w.stream_ordering, 0 FROM ("
            " SELECT s.event_id, s.room_id, s.sender, s.stream_ordering, s.vector FROM event_search s"
            f" WHERE {where} ORDER BY s.stream_ordering DESC LIMIT ?"
            f") w WHERE w.vector @@ {self._tsquery(q.words)} ORDER BY w.stream_ordering DESC",
            *args, PROBE,
        )

    async def search(
        self, q: SearchQuery, *, limit: int, by_rank: bool, offset: int = 0, before: int | None = None,
    ) -> list[Hit]:
        """Matching events: newest first (paged by ``before``, a stream ordering), or, with
        ``by_rank``, the newest ``RANK_WINDOW`` matches best first (paged by ``offset``)."""
        if not q.words or not q.room_ids or not q.keys:
            return []
        common = False
        if self._postgres:
            probe = await self._newest(q, None if by_rank else before)
            if not by_rank and len(probe) >= limit:
                return [_hit(r) for r in probe[:limit]]
            common = len(probe) >= PROBE // COMMON_ONE_IN
        source, where, args = self._where(q)
        # SQLite: FTS5 walks its rowids (the stream orderings) newest first and stops at the limit.
        newest = "s.stream_ordering DESC" if self._postgres else "f.rowid DESC"
        if not by_rank:
            if before is not None:
                where += " AND s.stream_ordering < ?" if self._postgres else " AND f.rowid < ?"
                args.append(before)
            rows = await self._fetch(
                f"SELECT s.event_id, s.room_id, s.sender, s.stream_ordering, 0 FROM {source}"
                f" WHERE {where} ORDER BY {newest} LIMIT ?",
                [*args, limit], from_gin=True,
            )
        else:
            rank = f"ts_rank_cd(s.vector, {self._tsquery(q.words)})" if self._postgres else "-bm25(event_search_fts)"
            rows = await self._fetch(
                "SELECT event_id, room_id, sender, so, score FROM ("
                f" SELECT s.event_id AS event_id, s.room_id AS room_id, s.sender AS sender,"
                f" s.stream_ordering AS so, {rank} AS score FROM {source}"
                f" WHERE {where} ORDER BY {newest} LIMIT ?"
                ") newest ORDER BY score DESC, so DESC LIMIT ? OFFSET ?",
                [*args, RANK_WINDOW, limit, offset], from_gin=not common,
            )
        return [_hit(r) for r in rows]

    async def count(self, q: SearchQuery) -> int:
        """How many events match, counted up to ``COUNT_CAP``."""
        if not q.words or not q.room_ids or not q.keys:
            return 0
        source, where, args = self._where(q)
        rows = await self._fetch(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM {source} WHERE {where} LIMIT ?) matches", [*args, COUNT_CAP],
            from_gin=True,
        )
        return int(rows[0][0] or 0)


def _hit(row: tuple[Any, ...]) -> Hit:
    return Hit(row[0], row[1], row[2], int(row[3]), float(row[4]))


# port-db (storage/porting.py): the search index is derived from the events and each engine
# keeps it its own way (FTS5 tables on SQLite, a tsvector column on PostgreSQL). It is not
# copied: the target's is rebuilt from the copied events, as migration 0017 builds it.
DERIVED_TABLE = "event_search"


def engine_own_table(name: str) -> bool:
    """Whether a SQLite table is the search index or one of FTS5's tables behind it."""
    return name == DERIVED_TABLE or name.startswith(DERIVED_TABLE + "_fts")


REBUILD_POSTGRES_INDEX = (
    "INSERT INTO event_search (event_id, room_id, sender, key, stream_ordering, vector)"
    " SELECT event_id, room_id, sender, key, stream_ordering, to_tsvector('simple', value) FROM ("
    " SELECT event_id, room_id, sender, stream_ordering,"
    " CASE type WHEN 'm.room.message' THEN 'content.body' WHEN 'm.room.name' THEN 'content.name'"
    " ELSE 'content.topic' END AS key,"
    " CASE type WHEN 'm.room.message' THEN j -> 'content' ->> 'body'"
    " WHEN 'm.room.name' THEN j -> 'content' ->> 'name' ELSE j -> 'content' ->> 'topic' END AS value,"
    " CASE type WHEN 'm.room.message' THEN jsonb_typeof(j -> 'content' -> 'body')"
    " WHEN 'm.room.name' THEN jsonb_typeof(j -> 'content' -> 'name')"
    " ELSE jsonb_typeof(j -> 'content' -> 'topic') END AS kind"
    " FROM (SELECT e.*, CASE WHEN strpos(e.json, '\\u0000') > 0 THEN NULL ELSE e.json::jsonb END AS j"
    " FROM events e WHERE e.outcome = 'accepted'"
    " AND ((e.type = 'm.room.message' AND e.state_key IS NULL)"
    " OR (e.type IN ('m.room.name', 'm.room.topic') AND e.state_key = ''))) AS candidates"
    ") AS found WHERE kind = 'string'"
)
