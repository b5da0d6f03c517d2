"""OpenID tokens (storage/schema/0012_openid_and_timestamps.sql): issued to a local user by
the client-server API, exchanged for the user's ID by ``GET /openid/userinfo``.

Guarantees: the token itself is never stored, only its SHA-256; a token is answered only
before its ``expires_ts`` (checked in the query, with the caller's clock); expired rows are
deleted whenever a new token is issued, so the table holds at most the tokens of the last
lifetime.
"""

from __future__ import annotations

from homeserver.storage.database import Database
from homeserver.storage.users import token_hash


class OpenIdStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def issue(self, token: str, user_id: str, expires_ts: int, now_ms: int) -> None:
        """Record ``token`` for ``user_id`` until ``expires_ts``; drop the expired ones."""
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM openid_tokens WHERE expires_ts <= ?", now_ms)
            await conn.execute(
                "INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES (?, ?, ?)",
                token_hash(token), user_id, expires_ts,
            )

    async def owner(self, token: str, now_ms: int) -> str | None:
        """The user ``token`` was issued to, while it has not expired; else None."""
        value = await self.db.fetchval(
            "SELECT user_id FROM openid_tokens WHERE token_hash = ? AND expires_ts > ?",
            token_hash(token), now_ms,
        )
        return None if value is None else str(value)
