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

from homeserver.storage.database import Database

MAX_WORDS = 16
# Rank ordering ranks the newest RANK_WINDOW matches (a word found in most messages would
# otherwise cost a ranking of all of them per page); count stops at COUNT_CAP.
RANK_WINDOW = 2000
COUNT_CAP = 2000
_WORD = re.compile(r"\w+", re.UNICODE)


def search_words(term: str) -> list[str]:
    """The words of a search term (lower case, at most ``MAX_WORDS``, no duplicates)."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(term)))[:MAX_WORDS]


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

    def _where(self, q: SearchQuery) -> tuple[str, str, list[Any]]:
        """The FROM clause, the conditions and their arguments of a query."""
        if self._postgres:
            source = "event_search s"
            match = "s.vector @@ to_tsquery('simple', ?)"
            term = " & ".join(f"{w}:*" for w in q.words)
        else:
            source = "event_search_fts f JOIN event_search s ON s.stream_ordering = f.rowid"
            match = "event_search_fts MATCH ?"
            term = " AND ".join('"' + w.replace('"', '""') + '"*' for w in q.words)
        conds = [match]
        args: list[Any] = [term]
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

    async def search(
        self, q: SearchQuery, *, limit: int, by_rank: bool, offset: int = 0, before: int | None = None,
    ) -> list[Hit]:
        """Matching events: newest first (paged by ``before``, a stream ordering), or, with
        ``by_rank``, the newest ``RANK_WINDOW`` matches best first (paged by ``offset``)."""
        if not q.words or not q.room_ids or not q.keys:
            return []
        source, where, args = self._where(q)
        # SQLite: FTS5 walks its rowids (the stream orderings) newest first and stops at the limit.
        newest = "s.stream_ordering DESC" if self._postgres else "f.rowid DESC"
        if not by_rank:
            if before is not None:
                where += " AND s.stream_ordering < ?" if self._postgres else " AND f.rowid < ?"
                args.append(before)
            rows = await self.db.fetchall(
                f"SELECT s.event_id, s.room_id, s.sender, s.stream_ordering, 0 FROM {source}"
                f" WHERE {where} ORDER BY {newest} LIMIT ?",
                *args, limit,
            )
        else:
            rank = "ts_rank_cd(s.vector, to_tsquery('simple', ?))" if self._postgres else "-bm25(event_search_fts)"
            rank_args: list[Any] = [args[0]] if self._postgres else []
            rows = await self.db.fetchall(
                "SELECT event_id, room_id, sender, so, score FROM ("
                f" SELECT s.event_id AS event_id, s.room_id AS room_id, s.sender AS sender,"
                f" s.stream_ordering AS so, {rank} AS score FROM {source}"
                f" WHERE {where} ORDER BY {newest} LIMIT ?"
                ") newest ORDER BY score DESC, so DESC LIMIT ? OFFSET ?",
                *rank_args, *args, RANK_WINDOW, limit, offset,
            )
        return [Hit(r[0], r[1], r[2], int(r[3]), float(r[4])) for r in rows]

    async def count(self, q: SearchQuery) -> int:
        """How many events match, counted up to ``COUNT_CAP``."""
        if not q.words or not q.room_ids or not q.keys:
            return 0
        source, where, args = self._where(q)
        value = await self.db.fetchval(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM {source} WHERE {where} LIMIT ?) matches", *args, COUNT_CAP
        )
        return int(value or 0)
