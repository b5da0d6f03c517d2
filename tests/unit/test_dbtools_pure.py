"""The pure parts of port-db and backup: the copy order under foreign keys, value
conversion by target column type, and DSNs printed without their password."""

from __future__ import annotations

import pytest

from homeserver.storage.backup import dsn_without_password
from homeserver.storage.porting import PortError, convert_rows, copy_order


def test_copy_order_puts_referenced_tables_first() -> None:
    refs = [("memberships", "users"), ("memberships", "rooms"), ("rooms", "users"), ("users", "users")]
    assert copy_order(["memberships", "rooms", "tokens", "users"], refs) == ["tokens", "users", "rooms", "memberships"]
    # A cycle cannot be ordered: its tables come last, alphabetically.
    assert copy_order(["a", "b", "c"], [("a", "b"), ("b", "a")]) == ["c", "a", "b"]
    # References to tables not copied are ignored.
    assert copy_order(["a"], [("a", "elsewhere")]) == ["a"]


def test_values_are_converted_by_the_target_column_type() -> None:
    rows = [(1, 0, "x", b"\x00\x01", "7", 2.0, '{"k": 1}'), (None, 1, b"caf\xc3\xa9", "s", 3, 4, None)]
    types = ["bigint", "boolean", "text", "bytea", "integer", "double precision", "jsonb"]
    columns = ["id", "flag", "name", "blob", "n", "f", "j"]
    assert convert_rows("t", columns, types, rows) == [
        (1, False, "x", b"\x00\x01", 7, 2.0, '{"k": 1}'),
        (None, True, "café", b"s", 3, 4.0, None),
    ]


def test_a_value_the_column_cannot_hold_is_named() -> None:
    with pytest.raises(PortError, match=r"t.flag: cannot store 7 as boolean"):
        convert_rows("t", ["id", "flag"], ["bigint", "boolean"], [(1, 0), (2, 7)])
    with pytest.raises(PortError, match=r"t.ts: cannot store 1.5 as bigint"):
        convert_rows("t", ["ts"], ["bigint"], [(1.5,)])


def test_printed_dsns_carry_no_password() -> None:
    assert dsn_without_password("postgresql://hs:s3cret@db:5432/hs?sslmode=require") == (
        "postgresql://hs@db:5432/hs?sslmode=require", True)
    assert dsn_without_password("postgresql://hs@db/hs?password=s3cret") == ("postgresql://hs@db/hs", True)
    assert dsn_without_password("postgresql://postgres@127.0.0.1:5432/x") == (
        "postgresql://postgres@127.0.0.1:5432/x", False)
    assert dsn_without_password("host=db user=hs password='a b' dbname=hs") == ("host=db user=hs dbname=hs", True)
