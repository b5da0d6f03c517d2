"""Registration tokens: the shared secrets of the m.login.registration_token stage that
operators make and revoke from the command line (``homeserver registration-token``).

Guarantees: a token is valid while it has not expired and fewer registrations than
``uses_allowed`` (NULL: unlimited) have completed with it; a use is counted by one
conditional UPDATE in the transaction that creates the account (``use``), so concurrent
registrations never use a token more often than allowed, and a registration that fails
(taken user ID) uses nothing. Stateless apart from the database.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from homeserver.storage.database import Connection, Database

# The spec's opaque identifier grammar, at most 64 characters.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


class TokenExistsError(Exception):
    """A registration token of that name exists already."""


class TokenUnusableError(Exception):
    """The token is unknown, expired or used up (raised by ``use``)."""


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None  # ms since the epoch
    created_ts: int

    def valid_at(self, now_ms: int) -> bool:
        if self.expiry_time is not None and self.expiry_time <= now_ms:
            return False
        return self.uses_allowed is None or self.completed + self.pending < self.uses_allowed


def is_valid_token_text(token: str) -> bool:
    return TOKEN_PATTERN.match(token) is not None


def new_token() -> str:
    return secrets.token_urlsafe(12)  # 16 characters of [A-Za-z0-9_-]


def _now_ms() -> int:
    return int(time.time() * 1000)


_COLUMNS = "token, uses_allowed, pending, completed, expiry_time, created_ts"


def _row(r: tuple[object, ...]) -> RegistrationToken:
    return RegistrationToken(
        str(r[0]),
        None if r[1] is None else int(str(r[1])),
        int(str(r[2])),
        int(str(r[3])),
        None if r[4] is None else int(str(r[4])),
        int(str(r[5])),
    )


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, token: str | None = None, *, uses_allowed: int | None = None, expiry_time: int | None = None
    ) -> RegistrationToken:
        """Store a new token (random when ``token`` is None); TokenExistsError if taken."""
        if token is not None and not is_valid_token_text(token):
            raise ValueError("a token is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '~', '-'")
        if uses_allowed is not None and uses_allowed < 1:
            raise ValueError("uses_allowed must be at least 1")
        name = token or new_token()
        now = _now_ms()
        inserted = await self.db.fetchval(
            "INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time, created_ts)"
            " VALUES (?, ?, 0, 0, ?, ?) ON CONFLICT (token) DO NOTHING RETURNING token",
            name, uses_allowed, expiry_time, now,
        )
        if inserted is None:
            raise TokenExistsError(name)
        return RegistrationToken(name, uses_allowed, 0, 0, expiry_time, now)

    async def get(self, token: str) -> RegistrationToken | None:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM registration_tokens WHERE token = ?", token)
        return None if row is None else _row(row)

    async def list(self) -> list[RegistrationToken]:
        rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM registration_tokens ORDER BY created_ts, token")
        return [_row(r) for r in rows]

    async def revoke(self, token: str) -> bool:
        """Delete the token; False when there was none. Registrations that completed with it
        stay; one under way is refused when it completes."""
        return await self.db.execute("DELETE FROM registration_tokens WHERE token = ?", token) > 0

    async def is_valid(self, token: str, now_ms: int | None = None) -> bool:
        found = await self.get(token)
        return found is not None and found.valid_at(_now_ms() if now_ms is None else now_ms)

    @staticmethod
    async def use(conn: Connection, token: str, now_ms: int | None = None) -> None:
        """Count one completed registration with ``token``, inside the caller's transaction
        (the one creating the account); TokenUnusableError when it is unknown, expired or
        used up. One conditional UPDATE: a concurrent use waits for the row and re-checks."""
        now = _now_ms() if now_ms is None else now_ms
        changed = await conn.execute(
            "UPDATE registration_tokens SET completed = completed + 1 WHERE token = ?"
            " AND (expiry_time IS NULL OR expiry_time > ?)"
            " AND (uses_allowed IS NULL OR completed + pending < uses_allowed)",
            token, now,
        )
        if changed != 1:
            raise TokenUnusableError(token)
