"""The push store (storage/schema/0018_push.sql): users' push rules and changes to the
server-default ones, the notifications their rules gave, and their pushers.

Guarantees: a user's rules of one kind keep a total order (``priority``, rewritten in one
transaction per change, serialised by a lock); a notification is recorded once per
(user, event); a pusher's queue is the user's notifications above its
``last_stream_ordering``, which only moves forward.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database
from homeserver.util.iters import batch_iter


@dataclass(frozen=True, slots=True)
class UserRule:
    kind: str
    rule_id: str
    actions: list[Any]
    conditions: list[dict[str, Any]] | None = None  # override and underride
    pattern: str | None = None  # content
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class DefaultOverride:
    rule_id: str
    enabled: bool | None = None  # None: as the default
    actions: list[Any] | None = None


class RuleNotFound(Exception):
    """The ``before`` / ``after`` rule (or the rule itself) does not exist."""


@dataclass(frozen=True, slots=True)
class Notification:
    user_id: str
    event_id: str
    room_id: str
    stream_ordering: int
    thread_id: str
    highlight: bool
    actions: list[Any]
    ts: int
    unread: bool = True


@dataclass(frozen=True, slots=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    created_ts: int = 0
    last_stream_ordering: int = 0
    failures: int = 0
    retry_at: int = 0


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_INSERT_NOTIFICATION = (
    "INSERT INTO push_notifications (user_id, event_id, room_id, stream_ordering, thread_id, highlight,"
    " actions, ts, unread) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (user_id, event_id) DO NOTHING"
)


def _notification_row(n: Notification) -> tuple[Any, ...]:
    return (n.user_id, n.event_id, n.room_id, n.stream_ordering, n.thread_id, int(n.highlight),
            _dumps(n.actions), n.ts)


_PUSHER_COLUMNS = ("user_id, app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang, data,"
                   " created_ts, last_stream_ordering, failures, retry_at")


def _pusher(r: Sequence[Any]) -> Pusher:
    return Pusher(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), int(r[9]), int(r[10]),
                  int(r[11]), int(r[12]))


class PushStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._rule_lock = asyncio.Lock()

    # ------------------------------------------------------------------ rules

    async def rules_for_users(
        self, user_ids: Sequence[str]
    ) -> dict[str, tuple[list[UserRule], dict[str, DefaultOverride]]]:
        """The stored rules of those of ``user_ids`` that have any (absent: defaults only)."""
        out: dict[str, tuple[list[UserRule], dict[str, DefaultOverride]]] = {}
        for start in range(0, len(user_ids), 500):
            chunk = list(user_ids[start:start + 500])
            marks = ", ".join("?" for _ in chunk)
            for r in await self.db.fetchall(
                "SELECT user_id, kind, rule_id, conditions, pattern, actions, enabled FROM push_rules"
                f" WHERE user_id IN ({marks}) ORDER BY user_id, kind, priority", *chunk,
            ):
                rule = UserRule(r[1], r[2], json.loads(r[5]), json.loads(r[3]) if r[3] is not None else None,
                                r[4], bool(r[6]))
                out.setdefault(r[0], ([], {}))[0].append(rule)
            for r in await self.db.fetchall(
                f"SELECT user_id, rule_id, enabled, actions FROM push_rule_defaults WHERE user_id IN ({marks})",
                *chunk,
            ):
                override = DefaultOverride(r[1], None if r[2] is None else bool(r[2]),
                                           None if r[3] is None else json.loads(r[3]))
                out.setdefault(r[0], ([], {}))[1][r[1]] = override
        return out

    async def put_rule(self, user_id: str, rule: UserRule, before: str | None, after: str | None) -> None:
        """Add or replace ``rule``; ``before`` / ``after`` (a user rule of its kind) place it,
        else a replaced rule keeps its place and a new one comes first. RuleNotFound when
        ``before`` / ``after`` is not a rule of the user."""
        async with self._rule_lock, self.db.transaction() as conn:
            rows = await conn.fetchall(
                "SELECT rule_id FROM push_rules WHERE user_id = ? AND kind = ? ORDER BY priority",
                user_id, rule.kind,
            )
            order = [r[0] for r in rows]
            existed = rule.rule_id in order
            anchor = before if before is not None else after
            if anchor is not None:
                if anchor not in order or anchor == rule.rule_id:
                    raise RuleNotFound(anchor)
                if existed:
                    order.remove(rule.rule_id)
                at = order.index(anchor) + (0 if before is not None else 1)
                order.insert(at, rule.rule_id)
            elif not existed:
                order.insert(0, rule.rule_id)
            await conn.execute(
                "INSERT INTO push_rules (user_id, kind, rule_id, priority, conditions, pattern, actions, enabled)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, kind, rule_id) DO UPDATE SET"
                " conditions = excluded.conditions, pattern = excluded.pattern, actions = excluded.actions,"
                " enabled = excluded.enabled",
                user_id, rule.kind, rule.rule_id, 0,
                None if rule.conditions is None else _dumps(rule.conditions), rule.pattern, _dumps(rule.actions),
                int(rule.enabled),
            )
            await conn.executemany(
                "UPDATE push_rules SET priority = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                [(i, user_id, rule.kind, rid) for i, rid in enumerate(order)],
            )

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        async with self._rule_lock:
            n = await self.db.execute(
                "DELETE FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?", user_id, kind, rule_id
            )
        return n > 0

    async def update_rule(self, user_id: str, kind: str, rule_id: str, *, enabled: bool | None = None,
                          actions: list[Any] | None = None) -> bool:
        """Set a user rule's ``enabled`` or ``actions``; False when there is no such rule."""
        if enabled is not None:
            n = await self.db.execute(
                "UPDATE push_rules SET enabled = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                int(enabled), user_id, kind, rule_id,
            )
        else:
            n = await self.db.execute(
                "UPDATE push_rules SET actions = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
                _dumps(actions), user_id, kind, rule_id,
            )
        return n > 0

    async def override_default(self, user_id: str, rule_id: str, *, enabled: bool | None = None,
                               actions: list[Any] | None = None) -> None:
        """Change a server-default rule's ``enabled`` or ``actions`` for ``user_id``."""
        if enabled is not None:
            await self.db.execute(
                "INSERT INTO push_rule_defaults (user_id, rule_id, enabled, actions) VALUES (?, ?, ?, NULL)"
                " ON CONFLICT (user_id, rule_id) DO UPDATE SET enabled = excluded.enabled",
                user_id, rule_id, int(enabled),
            )
        else:
            await self.db.execute(
                "INSERT INTO push_rule_defaults (user_id, rule_id, enabled, actions) VALUES (?, ?, NULL, ?)"
                " ON CONFLICT (user_id, rule_id) DO UPDATE SET actions = excluded.actions",
                user_id, rule_id, _dumps(actions),
            )

    # ------------------------------------------------------------------ notifications

    async def add_notifications(self, rows: Sequence[Notification]) -> None:
        if not rows:
            return
        await self.db.executemany(_INSERT_NOTIFICATION, [_notification_row(n) for n in rows])

    async def pass_cursor(self) -> int:
        """The stream ordering up to which the notification pass has evaluated events."""
        value = await self.db.fetchval("SELECT stream_ordering FROM push_pass WHERE id = 1")
        return int(value) if value is not None else 0

    async def record_pass(self, rows: Sequence[Notification], reads: Mapping[tuple[str, str], int],
                          redacted: Sequence[str], cursor: int) -> None:
        """One batch of the notification pass, in one transaction: its notification rows
        (once per (user, event): a batch evaluated again adds nothing), the (user, room)s
        read up to a stream ordering, the notifications of redacted events removed, and
        the pass's cursor moved forward to ``cursor``."""
        async with self.db.transaction() as conn:
            if rows:
                await conn.executemany(_INSERT_NOTIFICATION, [_notification_row(n) for n in rows])
            for (user_id, room_id), upto in reads.items():
                await conn.execute(
                    "UPDATE push_notifications SET unread = 0 WHERE user_id = ? AND room_id = ? AND unread = 1"
                    " AND stream_ordering <= ?", user_id, room_id, upto,
                )
            for chunk in batch_iter(redacted, 500):
                cond, args = self.db.dialect.in_list("event_id", chunk)
                await conn.execute(f"DELETE FROM push_notifications WHERE {cond}", *args)
            await conn.execute(
                "UPDATE push_pass SET stream_ordering = ? WHERE id = 1 AND stream_ordering < ?", cursor, cursor,
            )

    async def mark_read(self, user_id: str, room_id: str, thread_id: str | None, upto: int) -> None:
        """The user's notifications in the room up to stream ordering ``upto`` are read: all of
        them (``thread_id`` None, an unthreaded receipt) or those of one thread."""
        if thread_id is None:
            await self.db.execute(
                "UPDATE push_notifications SET unread = 0 WHERE user_id = ? AND room_id = ? AND unread = 1"
                " AND stream_ordering <= ?", user_id, room_id, upto,
            )
        else:
            await self.db.execute(
                "UPDATE push_notifications SET unread = 0 WHERE user_id = ? AND room_id = ? AND unread = 1"
                " AND thread_id = ? AND stream_ordering <= ?", user_id, room_id, thread_id, upto,
            )

    async def unread_counts(self, user_id: str) -> dict[str, dict[str, tuple[int, int]]]:
        """The user's unread (notification, highlight) counts per room and thread."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for r in await self.db.fetchall(
            "SELECT room_id, thread_id, COUNT(*), SUM(highlight) FROM push_notifications"
            " WHERE user_id = ? AND unread = 1 GROUP BY room_id, thread_id", user_id,
        ):
            out.setdefault(r[0], {})[r[1]] = (int(r[2]), int(r[3] or 0))
        return out

    async def notifications(self, user_id: str, before: int | None, limit: int,
                            only_highlight: bool) -> list[Notification]:
        """The user's notifications, newest first, below stream ordering ``before``."""
        sql = ("SELECT user_id, event_id, room_id, stream_ordering, thread_id, highlight, actions, ts, unread"
               " FROM push_notifications WHERE user_id = ?")
        args: list[Any] = [user_id]
        if before is not None:
            sql += " AND stream_ordering < ?"
            args.append(before)
        if only_highlight:
            sql += " AND highlight = 1"
        sql += " ORDER BY stream_ordering DESC LIMIT ?"
        args.append(limit)
        return [Notification(r[0], r[1], r[2], int(r[3]), r[4], bool(r[5]), json.loads(r[6]), int(r[7]), bool(r[8]))
                for r in await self.db.fetchall(sql, *args)]

    async def notifications_after(self, user_id: str, after: int, limit: int) -> list[Notification]:
        """The user's notifications above stream ordering ``after``, oldest first (a pusher's queue)."""
        return [Notification(r[0], r[1], r[2], int(r[3]), r[4], bool(r[5]), json.loads(r[6]), int(r[7]), bool(r[8]))
                for r in await self.db.fetchall(
                    "SELECT user_id, event_id, room_id, stream_ordering, thread_id, highlight, actions, ts, unread"
                    " FROM push_notifications WHERE user_id = ? AND stream_ordering > ?"
                    " ORDER BY stream_ordering LIMIT ?", user_id, after, limit)]

    async def prune(self, read_before_ts: int, all_before_ts: int) -> None:
        """Delete read notifications recorded before ``read_before_ts`` and all before ``all_before_ts``."""
        await self.db.execute(
            "DELETE FROM push_notifications WHERE ts < ? AND (unread = 0 OR ts < ?)", read_before_ts, all_before_ts
        )

    async def unread_total(self, user_id: str) -> int:
        """The user's unread notifications over all rooms (a push's ``counts.unread``)."""
        value = await self.db.fetchval(
            "SELECT COUNT(*) FROM push_notifications WHERE user_id = ? AND unread = 1", user_id
        )
        return int(value or 0)

    # ------------------------------------------------------------------ pushers

    async def pushers(self, user_id: str | None = None) -> list[Pusher]:
        """The user's pushers (all pushers when None)."""
        if user_id is None:
            rows = await self.db.fetchall(f"SELECT {_PUSHER_COLUMNS} FROM pushers")
        else:
            rows = await self.db.fetchall(f"SELECT {_PUSHER_COLUMNS} FROM pushers WHERE user_id = ?", user_id)
        return [_pusher(r) for r in rows]

    async def set_pusher(self, pusher: Pusher, *, append: bool) -> None:
        """Add or replace the user's pusher (app_id, pushkey); without ``append`` the same
        (app_id, pushkey) of other users is removed."""
        async with self.db.transaction() as conn:
            if not append:
                await conn.execute(
                    "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                    pusher.app_id, pusher.pushkey, pusher.user_id,
                )
            await conn.execute(
                f"INSERT INTO pushers ({_PUSHER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)"
                " ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind,"
                " app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name,"
                " profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data",
                pusher.user_id, pusher.app_id, pusher.pushkey, pusher.kind, pusher.app_display_name,
                pusher.device_display_name, pusher.profile_tag, pusher.lang, _dumps(pusher.data), pusher.created_ts,
                pusher.last_stream_ordering,
            )

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self.db.execute(
            "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?", user_id, app_id, pushkey
        )

    async def delete_pushkeys(self, app_id: str, pushkeys: Iterable[str]) -> None:
        """Remove every pusher of ``app_id`` with one of ``pushkeys`` (a gateway rejected them)."""
        await self.db.executemany(
            "DELETE FROM pushers WHERE app_id = ? AND pushkey = ?", [(app_id, k) for k in pushkeys]
        )

    async def pusher_progress(self, pusher: Pusher, last_stream_ordering: int, failures: int, retry_at: int) -> None:
        await self.db.execute(
            "UPDATE pushers SET last_stream_ordering = ?, failures = ?, retry_at = ?"
            " WHERE user_id = ? AND app_id = ? AND pushkey = ? AND last_stream_ordering <= ?",
            last_stream_ordering, failures, retry_at, pusher.user_id, pusher.app_id, pusher.pushkey,
            last_stream_ordering,
        )
