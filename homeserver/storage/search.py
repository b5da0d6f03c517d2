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
            source = "event_search_fts f JOIN event_search s ON s.rowid = f.rowid"
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
        """Matching events: best first (``by_rank``, paged by ``offset``) or newest first
        (paged by ``before``, a stream ordering)."""
        if not q.words or not q.room_ids or not q.keys:
            return []
        source, where, args = self._where(q)
        rank = "ts_rank_cd(s.vector, to_tsquery('simple', ?))" if self._postgres else "-bm25(event_search_fts)"
        rank_args: list[Any] = [args[0]] if self._postgres else []
        if before is not None and not by_rank:
            where += " AND s.stream_ordering < ?"
            args.append(before)
        order = "score DESC, s.stream_ordering DESC" if by_rank else "s.stream_ordering DESC"
        rows = await self.db.fetchall(
            f"SELECT s.event_id, s.room_id, s.sender, s.stream_ordering, {rank} AS score FROM {source}"
            f" WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            *rank_args, *args, limit, offset,
        )
        return [Hit(r[0], r[1], r[2], int(r[3]), float(r[4])) for r in rows]

    async def count(self, q: SearchQuery) -> int:
        if not q.words or not q.room_ids or not q.keys:
            return 0
        source, where, args = self._where(q)
        return int(await self.db.fetchval(f"SELECT COUNT(*) FROM {source} WHERE {where}", *args) or 0)
