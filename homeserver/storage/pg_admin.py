"""PostgreSQL server administration for the testbed: creating and dropping one
database per test server, through the admin DSN (``CREATE DATABASE`` cannot run in a
transaction, so this uses a plain connection of its own rather than the pool).
"""

from __future__ import annotations


async def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` on the PostgreSQL server of ``admin_dsn`` unless it exists;
    return the DSN of the new database."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_dsn(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def database_dsn(admin_dsn: str, name: str) -> str:
    """The admin DSN with its database replaced by ``name`` (query string kept)."""
    base, sep, query = admin_dsn.partition("?")
    scheme, _, rest = base.partition("://")
    if "/" in rest:
        rest = rest.split("/", 1)[0]
    return f"{scheme}://{rest}/{name}" + (sep + query if sep else "")
