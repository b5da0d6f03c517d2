"""The push store on both engines: rule order with before/after, read marks by thread,
counts, pruning by age, pushers with and without append."""

from __future__ import annotations

from homeserver.storage.database import Database
from homeserver.storage.migrations import migrate
from homeserver.storage.push import Notification, Pusher, PushStore, RuleNotFound, UserRule

U = "@u:x"


def note(event: str, ordering: int, *, room: str = "!r:x", thread: str = "main", highlight: bool = False,
         ts: int = 1_000) -> Notification:
    return Notification(U, event, room, ordering, thread, highlight, ["notify"], ts)


async def test_rules_counts_pruning_pushers(db: Database) -> None:
    await migrate(db)
    store = PushStore(db)

    # Rule order: a new rule comes first; before/after place it; an unknown anchor is refused.
    for rid, before, after in (("a", None, None), ("b", None, None), ("c", None, "a"), ("d", "b", None)):
        await store.put_rule(U, UserRule("override", rid, [], []), before, after)
    rules, _ = (await store.rules_for_users([U]))[U]
    assert [r.rule_id for r in rules] == ["d", "b", "a", "c"]
    try:
        await store.put_rule(U, UserRule("override", "e", [], []), "nope", None)
        raise AssertionError("an unknown anchor was accepted")
    except RuleNotFound:
        pass
    await store.put_rule(U, UserRule("override", "b", ["notify"], []), None, None)  # replaced in place
    rules, _ = (await store.rules_for_users([U]))[U]
    assert [(r.rule_id, r.actions) for r in rules][:2] == [("d", []), ("b", ["notify"])]
    assert await store.delete_rule(U, "override", "d") and not await store.delete_rule(U, "override", "d")

    # Counts and read marks: a threaded receipt covers its thread, an unthreaded one all.
    await store.add_notifications([note("$1", 1), note("$2", 2, thread="$t", highlight=True), note("$3", 3),
                                   note("$4", 4, room="!o:x")])
    await store.add_notifications([note("$1", 1)])  # once per (user, event)
    assert await store.unread_counts(U) == {"!r:x": {"main": (2, 0), "$t": (1, 1)}, "!o:x": {"main": (1, 0)}}
    await store.mark_read(U, "!r:x", "$t", 10)
    assert await store.unread_counts(U) == {"!r:x": {"main": (2, 0)}, "!o:x": {"main": (1, 0)}}
    await store.mark_read(U, "!r:x", None, 1)
    assert (await store.unread_counts(U))["!r:x"] == {"main": (1, 0)}
    assert await store.unread_total(U) == 2
    assert [n.event_id for n in await store.notifications(U, None, 10, False)] == ["$4", "$3", "$2", "$1"]
    assert [n.event_id for n in await store.notifications(U, 3, 10, True)] == ["$2"]

    # Pruning: read rows before the first bound, every row before the second.
    await store.add_notifications([note("$old", 0, ts=10)])
    await store.prune(read_before_ts=2_000, all_before_ts=100)
    assert {n.event_id for n in await store.notifications(U, None, 10, False)} == {"$4", "$3"}

    # Pushers: without append the same app_id/pushkey of another user goes.
    def pusher(user: str) -> Pusher:
        return Pusher(user, "app", "key", "http", "A", "D", None, "en", {"url": "https://g/_matrix/push/v1/notify"})
    await store.set_pusher(pusher("@a:x"), append=False)
    await store.set_pusher(pusher("@b:x"), append=True)
    assert sorted(p.user_id for p in await store.pushers()) == ["@a:x", "@b:x"]
    await store.set_pusher(pusher("@c:x"), append=False)
    assert [p.user_id for p in await store.pushers()] == ["@c:x"]
    await store.delete_pushkeys("app", ["key"])
    assert await store.pushers() == []
