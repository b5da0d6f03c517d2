"""Checks the package layout rules of issue 16 ("Done when"), with the standard library only.

1. No SQL string outside ``homeserver/storage/`` (string literals, docstrings excluded).
2. No database engine test outside ``homeserver/storage/`` (``db.engine``, ``dialect.name``,
   ``isinstance`` against an engine class, an engine name compared to ``engine``), except
   the few config reads in ``ENGINE_ALLOWED``.
3. No module in ``homeserver/`` over ``MAX_LINES`` lines.
4. No import cycle between packages: each subpackage of ``homeserver`` (and each top-level
   module) is a node; every import counts, also those inside functions and
   ``TYPE_CHECKING`` blocks.

Run ``python tools/check_layout.py [root]``: exit 0 when the tree keeps the rules, else 1
with one line per offence.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "homeserver"
STORAGE = "storage"
MAX_LINES = 600

# SQL in a string literal: statements by their opening words, and the fragments a query
# built in pieces would carry. Upper case only: the code base writes SQL keywords in upper
# case, and prose in log and error messages does not.
SQL_PATTERNS = [
    re.compile(p)
    for p in (
        r"\bSELECT\b[\s\S]*\bFROM\b",
        r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|PRAGMA|VACUUM|ANALYZE|TRUNCATE|EXPLAIN|SAVEPOINT)\b",
        r"^\s*(SET\s+(LOCAL|SESSION)\b|LOCK\s+TABLE\b|RELEASE\s+SAVEPOINT\b|ROLLBACK\s+TO\b)",
        r"^\s*(BEGIN|COMMIT|ROLLBACK)(\s+(IMMEDIATE|EXCLUSIVE|DEFERRED|TRANSACTION))?\s*;?\s*$",
        r"\bINSERT\s+(OR\s+[A-Z]+\s+)?INTO\b",
        r"\bUPDATE\s+\w+\s+SET\b",
        r"\bDELETE\s+FROM\b",
        r"\b(CREATE|DROP)\s+(UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER|SEQUENCE)\b",
        r"\bALTER\s+TABLE\b",
        r"\bON\s+CONFLICT\b",
        r"\bWHERE\s+[\w.]+\s*(=|<|>|!=|IN\b|IS\b|LIKE\b)",
        r"=\s*ANY\s*\(\s*\?",
    )
]

ENGINE_NAMES = frozenset({"postgres", "postgresql", "sqlite", "sqlite3"})
ENGINE_CLASS = re.compile(r"(Postgres|Postgre|Sqlite|SQLite)\w*(Database|Engine|Dialect|Connection)")

# Reads of the configured engine outside storage/ that are not engine tests: config.py
# validates the configured value; the CLI and Services hand it to open_database; the
# server logs it. Keyed by (path under the root, enclosing function's qualified name).
ENGINE_ALLOWED: dict[tuple[str, str], str] = {
    ("homeserver/config.py", "_validate"): "validates the configured database.engine",
    ("homeserver/cli/common.py", "config_database"): "passes config.database.engine to open_database",
    ("homeserver/app.py", "Services._build"): "passes config.database.engine to open_database",
    ("homeserver/server.py", "start_server"): "logs the configured engine at start-up",
}


@dataclass(frozen=True, order=True)
class Offence:
    rule: str
    path: str
    line: int
    detail: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: [{self.rule}] {self.detail}"


# ---------------------------------------------------------------------- the source tree


def python_files(root: Path, package: str = PACKAGE) -> list[Path]:
    return sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _in_storage(root: Path, path: Path, package: str) -> bool:
    parts = path.relative_to(root).parts
    return len(parts) > 2 and parts[0] == package and parts[1] == STORAGE


def _parse(path: Path) -> ast.Module:
    return _parse_text(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def _parse_text(text: str, filename: str) -> ast.Module:
    """Parsed once for all four rules (the trees are only read)."""
    return ast.parse(text, filename=filename)


def _walk_with_scope(tree: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """Every node, with the qualified name of the function or class around it ('' at
    module level)."""
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, scope = stack.pop()
        yield node, scope
        inner = scope
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            inner = f"{scope}.{node.name}" if scope else node.name
        for child in ast.iter_child_nodes(node):
            stack.append((child, inner))


# ---------------------------------------------------------------------- rule 1: SQL


def _statement_strings(tree: ast.AST) -> set[int]:
    """Strings that are whole expression statements: docstrings and string "comments"."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant | ast.JoinedStr):
            ids.add(id(node.value))
            if isinstance(node.value, ast.JoinedStr):
                ids.update(id(v) for v in node.value.values)
    return ids


def looks_like_sql(text: str) -> bool:
    return any(p.search(text) for p in SQL_PATTERNS)


def sql_offences(root: Path, package: str = PACKAGE) -> list[Offence]:
    found: list[Offence] = []
    for path in python_files(root, package):
        if _in_storage(root, path, package):
            continue
        tree = _parse(path)
        skip = _statement_strings(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            text: str | None = None
            if isinstance(node, ast.JoinedStr):
                skip.update(id(v) for v in node.values)
                text = "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            if text is not None and looks_like_sql(text):
                snippet = " ".join(text.split())
                snippet = snippet if len(snippet) <= 70 else snippet[:67] + "..."
                found.append(Offence("sql", _rel(root, path), getattr(node, "lineno", 0), f"SQL string {snippet!r}"))
    return sorted(found)


# ---------------------------------------------------------------------- rule 2: engine tests


def _is_engine_expr(node: ast.AST) -> bool:
    """``x.engine``, a name ``engine``, or ``x.dialect.name``."""
    if isinstance(node, ast.Attribute):
        if node.attr == "engine":
            return True
        if node.attr == "name" and isinstance(node.value, ast.Attribute) and node.value.attr == "dialect":
            return True
    return isinstance(node, ast.Name) and node.id == "engine"


def _engine_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.lower() in ENGINE_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_engine_literal(e) for e in node.elts)
    return False


def _engine_test(node: ast.AST) -> str | None:
    if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        if any(_is_engine_expr(s) for s in sides):
            return "compares the database engine"
        if any(_engine_literal(s) for s in sides) and any(
            isinstance(s, ast.Attribute | ast.Name) and "engine" in ast.unparse(s).lower() for s in sides
        ):
            return "compares an engine name"
    if isinstance(node, ast.Attribute) and node.attr == "name" and isinstance(node.value, ast.Attribute) \
            and node.value.attr == "dialect":
        return "reads dialect.name"
    if isinstance(node, ast.Attribute) and node.attr == "engine":
        return "reads an engine attribute"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("isinstance", "issubclass") \
            and len(node.args) == 2 and ENGINE_CLASS.search(ast.unparse(node.args[1])):
        return "tests the class of a database engine"
    return None


def engine_offences(
    root: Path, package: str = PACKAGE, allowed: dict[tuple[str, str], str] | None = None
) -> list[Offence]:
    allowed = ENGINE_ALLOWED if allowed is None else allowed
    found: dict[tuple[str, int], Offence] = {}
    for path in python_files(root, package):
        if _in_storage(root, path, package):
            continue
        rel = _rel(root, path)
        for node, scope in _walk_with_scope(_parse(path)):
            what = _engine_test(node)
            if what is None or (rel, scope) in allowed:
                continue
            line = getattr(node, "lineno", 0)
            # One offence a line: a comparison and the attribute inside it are one test.
            key = (rel, line)
            if key not in found or isinstance(node, ast.Compare):
                found[key] = Offence("engine", rel, line, f"{what}: {ast.unparse(node)[:70]}")
    return sorted(found.values())


# ---------------------------------------------------------------------- rule 3: module size


def size_offences(root: Path, package: str = PACKAGE, max_lines: int = MAX_LINES) -> list[Offence]:
    found = []
    for path in python_files(root, package):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > max_lines:
            found.append(Offence("size", _rel(root, path), 0, f"{lines} lines (limit {max_lines})"))
    return found


# ---------------------------------------------------------------------- rule 4: import cycles


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node_of(module: str, package: str, known: set[str]) -> str | None:
    """The graph node of a module inside ``package``: ``package.sub`` for a subpackage or
    a top-level module; None outside the package or for the package itself."""
    parts = module.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    node = f"{package}.{parts[1]}"
    return node if node in known else None


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            yield target, node.lineno
            # ``from homeserver import rooms`` imports the subpackage itself.
            for alias in node.names:
                yield f"{target}.{alias.name}", node.lineno


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str
    line: int


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, dict[str, list[Edge]]]:
    """node -> imported node -> the import statements making that edge."""
    files = python_files(root, package)
    known: set[str] = set()
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) >= 2 and parts[1] != "__init__.py":
            known.add(f"{package}.{Path(parts[1]).stem}")
    graph: dict[str, dict[str, list[Edge]]] = {n: {} for n in sorted(known)}
    for path in files:
        module = _module_name(root, path)
        source = _node_of(module, package, known)
        if source is None:
            continue
        for target_module, line in _imported_modules(_parse(path), module, path.name == "__init__.py"):
            target = _node_of(target_module, package, known)
            if target is None or target == source:
                continue
            edges = graph[source].setdefault(target, [])
            edge = Edge(source, target, _rel(root, path), line)
            if edge not in edges:
                edges.append(edge)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[Edge]]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one node, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def cycle_offences(root: Path, package: str = PACKAGE) -> list[Offence]:
    graph = import_graph(root, package)
    found = []
    for component in strongly_connected(graph):
        members = set(component)
        names = ", ".join(n.split(".", 1)[1] for n in component)
        found.append(Offence("cycle", f"{package}/", 0, f"import cycle among packages: {names}"))
        for source in component:
            for target, edges in sorted(graph[source].items()):
                if target in members:
                    first = edges[0]
                    more = f" (+{len(edges) - 1} more)" if len(edges) > 1 else ""
                    found.append(Offence(
                        "cycle", first.path, first.line,
                        f"{source.split('.', 1)[1]} -> {target.split('.', 1)[1]}{more}",
                    ))
    return found


# ---------------------------------------------------------------------- main


def check(root: Path, package: str = PACKAGE) -> list[Offence]:
    return [
        *sql_offences(root, package),
        *engine_offences(root, package),
        *size_offences(root, package),
        *cycle_offences(root, package),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the repository root (holding homeserver/)")
    args = parser.parse_args(argv)
    offences = check(args.root)
    if not offences:
        print("layout: OK (no SQL or engine test outside storage/, modules within "
              f"{MAX_LINES} lines, no package import cycle)")
        return 0
    counts: dict[str, int] = {}
    for offence in offences:
        counts[offence.rule] = counts.get(offence.rule, 0) + 1
        print(offence)
    summary = ", ".join(f"{n} {rule}" for rule, n in counts.items())
    print(f"layout: {len(offences)} offences ({summary})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
