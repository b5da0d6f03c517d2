"""The engines' capabilities and transaction callbacks, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio

import pytest

from homeserver.storage.database import Connection, Database, DeferredWriteError


async def _table(db: Database) -> None:
    await db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)")
    await db.executemany("INSERT INTO kv (k, v) VALUES (?, ?)", [(f"k{i}", i) for i in range(10)])


@pytest.mark.parametrize("values", [[], ["k1"], ["k2", "k5", "nope"], [f"k{i}" for i in range(10)]])
async def test_in_list_matches_exactly_the_values(db: Database, values: list[str]) -> None:
    await _table(db)
    cond, args = db.dialect.in_list("k", values)
    rows = await db.fetchall(f"SELECT k FROM kv WHERE {cond} ORDER BY k", *args)
    assert [r[0] for r in rows] == sorted(v for v in values if v != "nope")
    cond, args = db.dialect.not_in_list("k", values)
    rows = await db.fetchall(f"SELECT k FROM kv WHERE {cond} ORDER BY k", *args)
    assert {r[0] for r in rows} == {f"k{i}" for i in range(10)} - set(values)


async def test_in_list_text_does_not_depend_on_length(db: Database) -> None:
    assert db.dialect.in_list("k", ["a"])[0] == db.dialect.in_list("k", ["a", "b", "c"])[0]
    await _table(db)
    cond, args = db.dialect.in_list("v", [3, 4, 99])
    assert await db.fetchval(f"SELECT SUM(v) FROM kv WHERE {cond}", *args) == 7


async def test_unique_violation_is_recognised(db: Database) -> None:
    await _table(db)
    with pytest.raises(Exception) as info:
        await db.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "k1", 1)
    assert db.dialect.is_unique_violation(info.value)
    assert not db.dialect.is_deadlock(info.value)
    assert not db.dialect.is_unique_violation(RuntimeError("UNIQUE"))


async def test_callbacks_of_a_committed_transaction(db: Database) -> None:
    await _table(db)
    seen: list[str] = []
    async with db.transaction() as conn:
        await conn.execute("UPDATE kv SET v = 100 WHERE k = ?", "k1")
        conn.call_after(lambda: seen.append("after"))
        conn.call_on_exception(lambda: seen.append("rolled back"))
        assert seen == []  # nothing runs before the commit
    assert seen == ["after"]


async def test_callbacks_of_a_rolled_back_transaction(db: Database) -> None:
    await _table(db)
    seen: list[str] = []
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await conn.execute("UPDATE kv SET v = 100 WHERE k = ?", "k1")
            conn.call_after(lambda: seen.append("after"))
            conn.call_on_exception(lambda: seen.append("rolled back"))
            raise RuntimeError("boom")
    assert seen == ["rolled back"]
    assert await db.fetchval("SELECT v FROM kv WHERE k = ?", "k1") == 1


async def test_callbacks_of_independent_transactions(db: Database) -> None:
    await _table(db)
    seen: list[str] = []

    async def work(conn: Connection) -> int:
        await conn.execute("UPDATE kv SET v = 7 WHERE k = ?", "k2")
        conn.call_after(lambda: seen.append("after"))
        conn.call_on_exception(lambda: seen.append("rolled back"))
        return 1

    assert await db.independent_transaction(work) == 1
    assert seen == ["after"]

    async def failing(conn: Connection) -> int:
        await conn.execute("UPDATE kv SET v = 8 WHERE k = ?", "k2")
        conn.call_after(lambda: seen.append("after 2"))
        conn.call_on_exception(lambda: seen.append("rolled back 2"))
        await conn.execute("INSERT INTO kv (k, v) VALUES (?, ?)", "k3", 3)  # unique violation
        return 2

    with pytest.raises(Exception) as info:
        await db.independent_transaction(failing)
    assert db.dialect.is_unique_violation(info.value)
    assert seen == ["after", "rolled back 2"]
    assert await db.fetchval("SELECT v FROM kv WHERE k = ?", "k2") == 7


async def test_a_failing_callback_does_not_stop_the_others(db: Database) -> None:
    await _table(db)
    seen: list[str] = []

    def broken() -> None:
        raise ValueError("callback bug")

    async with db.transaction() as conn:
        conn.call_after(broken)
        conn.call_after(lambda: seen.append("second"))
    assert seen == ["second"]


async def test_callbacks_of_group_commits(db: Database) -> None:
    await _table(db)
    seen: list[str] = []
    future = db.defer(
        [("UPDATE kv SET v = ? WHERE k = ?", (50, "k4"), False)],
        after=[lambda: seen.append("after")],
        on_exception=[lambda: seen.append("failed")],
    )
    await future
    assert seen == ["after"]
    bad = db.defer(
        [("INSERT INTO kv (k, v) VALUES (?, ?)", ("k4", 1), False)],
        after=[lambda: seen.append("after bad")],
        on_exception=[lambda: seen.append("failed bad")],
    )
    with pytest.raises(DeferredWriteError):
        await asyncio.wait_for(bad, 10)
    assert seen == ["after", "failed bad"]
    assert await db.fetchval("SELECT v FROM kv WHERE k = ?", "k4") == 50


async def test_call_after_outside_a_transaction_runs_at_once(db: Database) -> None:
    seen: list[int] = []
    db.call_after(lambda: seen.append(1))
    assert seen == [1]
