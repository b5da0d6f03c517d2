"""tools/check_layout.py: each rule finds its offence in a small synthetic tree, and a
clean tree passes."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "tools" / "check_layout.py"
    spec = importlib.util.spec_from_file_location("check_layout", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layout"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cl = _load()


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        if parent != Path(".") and not (root / parent / "__init__.py").exists():
            (root / parent / "__init__.py").write_text("")
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A clean tree: SQL and an engine choice in storage/, one-way imports, small modules."""
    write(tmp_path, "homeserver/storage/events.py", '''
        """Event store."""
        SQL = "SELECT event_id FROM events WHERE room_id = ?"

        def pick(db):
            return "a" if db.dialect.name == "postgres" else "b"
    ''')
    write(tmp_path, "homeserver/rooms/service.py", '''
        """Rooms. A docstring may say SELECT event_id FROM events without offence."""
        from homeserver.storage.events import SQL  # SELECT x FROM y in a comment is fine

        def f():
            """DELETE FROM events WHERE 1 = 1 (docstring)."""
            return "Select a room from the list"
    ''')
    write(tmp_path, "homeserver/federation/sender.py", '''
        from homeserver.rooms import service
        from ..rooms.service import f
    ''')
    write(tmp_path, "homeserver/config.py", '''
        def _validate(config):
            if config.database.engine not in ("sqlite", "postgres"):
                raise ValueError("database.engine")
    ''')
    return tmp_path


def test_a_clean_tree_passes(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cl.check(tree) == []
    assert cl.main([str(tree)]) == 0
    assert "layout: OK" in capsys.readouterr().out


def test_sql_outside_storage_is_found(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tree, "homeserver/rooms/persist.py", '''
        def store(db, table, ids):
            db.execute("INSERT INTO events (event_id) VALUES (?)", 1)
            db.execute(f"DELETE FROM {table} WHERE id = ?", 2)
            db.execute("UPDATE events SET outcome = ? "
                       "WHERE event_id = ?", 3)
            return "SELECT 1"
    ''')
    offences = cl.sql_offences(tree)
    assert [(o.path, o.line) for o in offences] == [
        ("homeserver/rooms/persist.py", 3), ("homeserver/rooms/persist.py", 4),
        ("homeserver/rooms/persist.py", 5), ("homeserver/rooms/persist.py", 7),
    ]
    assert all(o.rule == "sql" for o in offences)
    assert cl.main([str(tree)]) == 1
    out = capsys.readouterr().out
    assert "homeserver/rooms/persist.py:3: [sql]" in out and "INSERT INTO events" in out


def test_sql_patterns() -> None:
    for sql in ("SELECT a FROM b", "  WITH x AS (SELECT 1) SELECT * FROM x", "INSERT OR IGNORE INTO t VALUES (?)",
                "CREATE TABLE t (a INT)", "CREATE UNIQUE INDEX i ON t (a)", "ALTER TABLE t ADD b INT",
                " AND id = ANY(?)", " ON CONFLICT (a) DO NOTHING", " WHERE room_id = ?",
                "SET LOCAL enable_sort = off", "BEGIN IMMEDIATE", "COMMIT"):
        assert cl.looks_like_sql(sql), sql
    for prose in ("select a room from the list", "Update the settings", "Delete the device", "No such table",
                  "The server selects FROM ...", "Set the name", "BEGIN the work", "committed"):
        assert not cl.looks_like_sql(prose), prose


def test_engine_tests_outside_storage_are_found(tree: Path) -> None:
    write(tree, "homeserver/federation/inbox.py", '''
        from homeserver.storage.engine.postgres import PostgresDatabase

        class Inbox:
            def __init__(self, db):
                self.postgres = db.engine == "postgres"
                self.name = db.dialect.name
                self.fast = isinstance(db, PostgresDatabase)

            def pick(self, engine):
                return engine in ("sqlite",)
    ''')
    found = sorted((o.line, o.detail.split(":")[0]) for o in cl.engine_offences(tree))
    assert found == [
        (6, "compares the database engine"),
        (7, "reads dialect.name"),
        (8, "tests the class of a database engine"),
        (11, "compares the database engine"),
    ]


def test_the_engine_allow_list_is_by_module_and_function(tree: Path) -> None:
    # config.py's _validate is allowed (the fixture has one); the same test elsewhere is not.
    write(tree, "homeserver/config.py", '''
        def _validate(config):
            if config.database.engine not in ("sqlite", "postgres"):
                raise ValueError("database.engine")

        def other(config):
            return config.database.engine == "postgres"
    ''')
    assert [(o.path, o.line) for o in cl.engine_offences(tree)] == [("homeserver/config.py", 7)]
    assert cl.engine_offences(tree, allowed={}) != []
    only_other = cl.engine_offences(tree, allowed={("homeserver/config.py", "other"): "test"})
    assert [(o.path, o.line) for o in only_other] == [("homeserver/config.py", 3)]


def test_modules_over_the_limit_are_found(tree: Path) -> None:
    write(tree, "homeserver/rooms/big.py", "x = 1\n" * 601)
    write(tree, "homeserver/rooms/limit.py", "x = 1\n" * 600)
    assert [(o.path, o.detail) for o in cl.size_offences(tree)] == [
        ("homeserver/rooms/big.py", "601 lines (limit 600)")
    ]


def test_a_package_cycle_is_found_through_function_and_type_checking_imports(tree: Path) -> None:
    assert cl.cycle_offences(tree) == []
    write(tree, "homeserver/rooms/remote.py", '''
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from homeserver.federation.sender import Sender
    ''')
    offences = cl.cycle_offences(tree)
    assert offences[0].detail == "import cycle among packages: federation, rooms"
    assert {(o.path, o.line, o.detail) for o in offences[1:]} == {
        ("homeserver/federation/sender.py", 2, "federation -> rooms (+1 more)"),
        ("homeserver/rooms/remote.py", 5, "rooms -> federation"),
    }
    # Inside a function counts as well.
    write(tree, "homeserver/rooms/remote.py", '''
        def later():
            from .. import federation
    ''')
    assert cl.cycle_offences(tree)[0].detail == "import cycle among packages: federation, rooms"


def test_cycles_through_several_packages_and_top_level_modules(tree: Path) -> None:
    write(tree, "homeserver/net/client.py", "import homeserver.crypto.keys\n")
    write(tree, "homeserver/crypto/keys.py", "from homeserver import config\n")
    write(tree, "homeserver/config.py", "def f():\n    from homeserver.net.client import x\n")
    write(tree, "homeserver/events/a.py", "from homeserver.util import clock\n")  # one way: no cycle
    write(tree, "homeserver/util/clock.py", "")
    components = cl.strongly_connected(cl.import_graph(tree))
    assert components == [["homeserver.config", "homeserver.crypto", "homeserver.net"]]


def test_the_real_tree_parses() -> None:
    """The checker runs on this repository (its verdict is the lead's business)."""
    root = Path(__file__).resolve().parents[2]
    offences = cl.check(root)
    assert all(isinstance(o, cl.Offence) for o in offences)
