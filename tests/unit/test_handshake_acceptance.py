"""Invariant 2's one exception can only be claimed by the resident's send_* handlers:
``Accepted`` (``rooms/outbox.py``) is named in the package only where it is defined, where
the sender checks it, and in ``federation/rooms_api.py``, and there ``Accepted.HANDSHAKE``
only inside ``_accept_member`` (the persisting step of send_join, send_leave and
send_knock). So /send, backfill, get_missing_events, state fetches and invites cannot
offer an event as a handshake's: their modules cannot name it."""

from __future__ import annotations

import ast
from pathlib import Path

import homeserver

PACKAGE = Path(homeserver.__file__).parent
DEFINED = "rooms/outbox.py"
CHECKED = "federation/sender.py"
CLAIMED = "federation/rooms_api.py"


def _names(tree: ast.AST) -> list[ast.AST]:
    """Every use of the name ``Accepted`` (a name, an attribute or an import of it)."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "Accepted":
            found.append(node)
        elif isinstance(node, ast.Attribute) and node.attr in ("Accepted", "HANDSHAKE"):
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and any(a.name == "Accepted" for a in node.names):
            found.append(node)
        elif isinstance(node, ast.Constant) and node.value == "handshake":
            found.append(node)
    return found


def test_only_the_send_handlers_claim_a_handshake() -> None:
    users: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if _names(ast.parse(path.read_text(), rel)):
            users.add(rel)
    assert users == {DEFINED, CHECKED, CLAIMED}
    tree = ast.parse((PACKAGE / CLAIMED).read_text())
    claims: list[str] = []
    for top in ast.walk(tree):
        if isinstance(top, ast.ClassDef):
            for func in top.body:
                claims.extend(func.name for node in ast.walk(func)
                              if isinstance(func, ast.AsyncFunctionDef | ast.FunctionDef)
                              and isinstance(node, ast.Attribute) and node.attr == "HANDSHAKE")
    outside_classes = [n for n in tree.body if not isinstance(n, ast.ClassDef) for m in ast.walk(n)
                       if isinstance(m, ast.Attribute) and m.attr == "HANDSHAKE"]
    assert claims == ["_accept_member"] and outside_classes == []


def test_the_scan_sees_a_claim() -> None:
    """The scan above is not blind: a module naming the member is found."""
    assert _names(ast.parse("from homeserver.rooms.outbox import Accepted\nx = Accepted.HANDSHAKE\n"))
    assert _names(ast.parse("x = outbox.Accepted('handshake')\n"))
