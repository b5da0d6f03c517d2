"""Database tools: ``port-db`` (SQLite into an empty PostgreSQL) and ``backup``
(issue 18; to be written)."""

from __future__ import annotations

import argparse


def add_db_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    del sub
