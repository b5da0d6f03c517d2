"""The user store: local accounts, devices, access tokens, profiles, sync filters and
client transaction IDs.

Guarantees: passwords are kept only as salted scrypt hashes (N = 2**17 by default; checked
in constant time, on a small thread pool of their own, never on the event loop; a weaker
stored hash is upgraded at the next successful login); access tokens only as their
SHA-256, so a leaked database holds no usable token; a (user, device, txnId) maps to at
most one event. Stateless apart from the database: any component may build one on the
shared ``Database``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from homeserver.storage.database import Connection, Database
from homeserver.storage.registration_tokens import RegistrationTokenStore

T = TypeVar("T")

# A deleted device's to-device queue goes with it (storage/to_device.py).
_DROP_TO_DEVICE = "DELETE FROM to_device_inbox WHERE user_id = ? AND device_id = ?"

# scrypt cost of new hashes: N = 2**17, r = 8, p = 1 needs 128 MiB and about 0.2-0.5 s of
# CPU per hash (current guidance: N >= 2**17). ``client.password_scrypt_log_n`` may lower it
# for tests only; a stored hash of a lower cost is upgraded at the user's next login.
SCRYPT_LOG_N = 17
SCRYPT_R = 8
SCRYPT_P = 1
# Distinct filters one user may store (the same filter posted again gets its ID back).
MAX_FILTERS_PER_USER = 1000
# Bounds for the parameters read back from a stored hash.
_MAX_N, _MAX_R, _MAX_P = 1 << 20, 32, 16
# Hashes computed at once, process-wide: each holds 128 * r * N bytes (128 MiB at the
# default) for its duration, and a hash keeps a core busy; one thread per two cores, at
# most two, leaves the event loop its share. Not the default executor, which DNS look-ups
# and other to_thread work share.
HASH_THREADS = max(1, min(2, (os.cpu_count() or 1) // 2))
_executor: ThreadPoolExecutor | None = None


def _scrypt_maxmem(n: int, r: int, p: int) -> int:
    # OpenSSL's need (128 * r * (n + 2) + 128 * r * p bytes), plus slack.
    return 128 * r * (n + p + 2) + (1 << 20)


def _hash_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="password-hash")
    return _executor


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hash_executor(), functools.partial(fn, *args))


class UserExistsError(Exception):
    """The user ID is already registered."""


@dataclass(frozen=True, slots=True)
class TokenOwner:
    user_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    admin: bool
    deactivated: bool
    created_ts: int


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    display_name: str | None
    created_ts: int


@dataclass(frozen=True, slots=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password_sync(password: str, log_n: int = SCRYPT_LOG_N) -> str:
    n = 1 << log_n
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=_scrypt_maxmem(n, SCRYPT_R, SCRYPT_P)
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _scrypt_params(stored: str) -> tuple[int, int, int] | None:
    """(n, r, p) of a stored scrypt hash, or None when it is not one we would compute."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return None
    if _scrypt_maxmem(n, r, p) > 2**31 - 1:  # hashlib's limit
        return None
    return n, r, p


def check_password_sync(password: str, stored: str) -> bool:
    params = _scrypt_params(stored)
    if params is None:
        return False
    n, r, p = params
    try:
        _, _, _, _, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=base64.b64decode(salt), n=n, r=r, p=p,
            maxmem=_scrypt_maxmem(n, r, p), dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def needs_rehash(stored: str, log_n: int = SCRYPT_LOG_N) -> bool:
    """Whether ``stored`` is weaker than what ``log_n`` computes (never a downgrade)."""
    params = _scrypt_params(stored)
    return params is None or params[0] < (1 << log_n) or params[1] < SCRYPT_R


def _check_unknown_user(password: str, log_n: int) -> bool:
    # Spend the same time as a real check, so timing does not reveal which users exist.
    check_password_sync(password, _dummy_hash(log_n))
    return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_access_token() -> str:
    return "hs_" + secrets.token_urlsafe(32)


def new_device_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(10))


class UserStore:
    def __init__(self, db: Database, *, password_log_n: int = SCRYPT_LOG_N) -> None:
        self.db = db
        self.password_log_n = password_log_n

    # ------------------------------------------------------------------ accounts

    async def user_exists(self, user_id: str) -> bool:
        return await self.db.fetchval("SELECT 1 FROM users WHERE user_id = ?", user_id) is not None

    async def create_user(
        self, user_id: str, password: str | None, displayname: str | None, *, admin: bool = False,
        registration_token: str | None = None,
    ) -> None:
        """Register ``user_id`` with its profile; raises UserExistsError when taken. With
        ``registration_token``, one use of that database token is counted in the same
        transaction (TokenUnusableError, and no account, when it is no longer usable)."""
        hashed = await self.hash_password(password) if password is not None else None
        async with self.db.transaction() as conn:
            if registration_token is not None:
                await RegistrationTokenStore.use(conn, registration_token)
            inserted = await conn.fetchval(
                "INSERT INTO users (user_id, password_hash, created_ts, admin) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
                user_id, hashed, _now_ms(), int(admin),
            )
            if inserted is None:
                raise UserExistsError(user_id)
            await conn.execute(
                "INSERT INTO profiles (user_id, displayname, avatar_url) VALUES (?, ?, NULL)"
                " ON CONFLICT (user_id) DO NOTHING",
                user_id, displayname,
            )

    async def get_account(self, user_id: str) -> Account | None:
        row = await self.db.fetchone(
            "SELECT user_id, admin, deactivated, created_ts FROM users WHERE user_id = ?", user_id
        )
        return None if row is None else Account(row[0], bool(row[1]), bool(row[2]), int(row[3]))

    async def list_accounts(self) -> list[Account]:
        rows = await self.db.fetchall(
            "SELECT user_id, admin, deactivated, created_ts FROM users ORDER BY user_id"
        )
        return [Account(r[0], bool(r[1]), bool(r[2]), int(r[3])) for r in rows]

    async def set_admin(self, user_id: str, admin: bool) -> bool:
        """False when there is no such user."""
        return await self.db.execute("UPDATE users SET admin = ? WHERE user_id = ?", int(admin), user_id) > 0

    async def set_password(self, user_id: str, password: str, *, keep_device: str | None = None,
                           logout_others: bool = False) -> None:
        """Replace the user's password; with ``logout_others``, every device but
        ``keep_device`` is logged out (deleted with its access tokens) in the same transaction."""
        hashed = await self.hash_password(password)
        async with self.db.transaction() as conn:
            await conn.execute("UPDATE users SET password_hash = ? WHERE user_id = ?", hashed, user_id)
            if logout_others:
                keep = keep_device or ""
                await conn.execute(
                    "DELETE FROM access_tokens WHERE user_id = ? AND device_id <> ?", user_id, keep
                )
                await conn.execute("DELETE FROM devices WHERE user_id = ? AND device_id <> ?", user_id, keep)

    async def deactivate(self, user_id: str) -> None:
        """Close the account for good: no login (the password hash is removed), every device
        and token gone, the profile emptied. The user ID stays taken."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = ?", user_id
            )
            await conn.execute("DELETE FROM access_tokens WHERE user_id = ?", user_id)
            await conn.execute("DELETE FROM devices WHERE user_id = ?", user_id)
            await conn.execute(
                "UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?", user_id
            )

    async def hash_password(self, password: str) -> str:
        """A new salted hash at this store's cost, computed off the event loop."""
        return await _off_loop(hash_password_sync, password, self.password_log_n)

    async def check_password(self, user_id: str, password: str) -> bool:
        """Whether ``password`` is the active account's; a right password stored at a lower
        cost than this store's is re-hashed at that cost (unless it changed meanwhile)."""
        stored = await self.db.fetchval(
            "SELECT password_hash FROM users WHERE user_id = ? AND deactivated = 0", user_id
        )
        if not isinstance(stored, str):
            return await _off_loop(_check_unknown_user, password, self.password_log_n)
        if not await _off_loop(check_password_sync, password, stored):
            return False
        if needs_rehash(stored, self.password_log_n):
            await self.db.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ? AND password_hash = ?",
                await self.hash_password(password), user_id, stored,
            )
        return True

    # ------------------------------------------------------------------ devices and tokens

    async def create_session(self, user_id: str, device_id: str | None, display_name: str | None) -> tuple[str, str]:
        """Create (or reuse) a device and give it a fresh access token: (device_id, token).

        Logging in again with an existing device ID invalidates that device's old tokens.
        """
        device_id = device_id or new_device_id()
        token = new_access_token()
        now = _now_ms()
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, device_id) DO NOTHING",
                user_id, device_id, display_name, now,
            )
            await conn.execute(
                "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", user_id, device_id
            )
            await conn.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES (?, ?, ?, ?)",
                token_hash(token), user_id, device_id, now,
            )
        return device_id, token

    async def get_token_owner(self, token: str) -> TokenOwner | None:
        row = await self.db.fetchone(
            "SELECT t.user_id, t.device_id FROM access_tokens t JOIN users u ON u.user_id = t.user_id"
            " WHERE t.token_hash = ? AND u.deactivated = 0",
            token_hash(token),
        )
        return None if row is None else TokenOwner(row[0], row[1])

    async def devices(self, user_id: str) -> list[Device]:
        rows = await self.db.fetchall(
            "SELECT device_id, display_name, created_ts FROM devices WHERE user_id = ? ORDER BY device_id", user_id
        )
        return [Device(r[0], r[1], int(r[2])) for r in rows]

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        row = await self.db.fetchone(
            "SELECT device_id, display_name, created_ts FROM devices WHERE user_id = ? AND device_id = ?",
            user_id, device_id,
        )
        return None if row is None else Device(row[0], row[1], int(row[2]))

    async def set_device_display_name(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        """False if the user has no such device."""
        changed = await self.db.execute(
            "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
            display_name, user_id, device_id,
        )
        return changed > 0

    async def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> None:
        """Delete the devices and their access tokens (unknown IDs are ignored)."""
        async with self.db.transaction() as conn:
            for device_id in dict.fromkeys(device_ids):
                await conn.execute(
                    "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", user_id, device_id
                )
                await conn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", user_id, device_id)
                await conn.execute(_DROP_TO_DEVICE, user_id, device_id)

    async def delete_device(self, user_id: str, device_id: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM access_tokens WHERE user_id = ? AND device_id = ?", user_id, device_id
            )
            await conn.execute("DELETE FROM devices WHERE user_id = ? AND device_id = ?", user_id, device_id)
            await conn.execute(_DROP_TO_DEVICE, user_id, device_id)

    async def delete_all_devices(self, user_id: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM access_tokens WHERE user_id = ?", user_id)
            await conn.execute("DELETE FROM devices WHERE user_id = ?", user_id)
            await conn.execute("DELETE FROM to_device_inbox WHERE user_id = ?", user_id)

    # ------------------------------------------------------------------ profiles

    async def get_profile(self, user_id: str) -> Profile | None:
        """The profile of a local user, or None when the user does not exist."""
        row = await self.db.fetchone(
            "SELECT p.displayname, p.avatar_url FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"
            " WHERE u.user_id = ?",
            user_id,
        )
        return None if row is None else Profile(row[0], row[1])

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        if field not in ("displayname", "avatar_url"):
            raise ValueError(field)
        await self.db.execute(
            f"INSERT INTO profiles (user_id, {field}) VALUES (?, ?)"
            f" ON CONFLICT (user_id) DO UPDATE SET {field} = excluded.{field}",
            user_id, value,
        )

    # ------------------------------------------------------------------ client transactions

    async def get_txn_event(self, user_id: str, device_id: str, txn_id: str) -> str | None:
        value = await self.db.fetchval(
            "SELECT event_id FROM client_txns WHERE user_id = ? AND device_id = ? AND txn_id = ?",
            user_id, device_id, txn_id,
        )
        return None if value is None else str(value)

    async def store_txn_event(
        self, user_id: str, device_id: str, txn_id: str, event_id: str, conn: Connection | None = None
    ) -> None:
        """Record the event a (user, device, txnId) sent; ``conn``: inside the caller's
        transaction (the one that persists the event)."""
        await (conn or self.db).execute(
            "INSERT INTO client_txns (user_id, device_id, txn_id, event_id, created_ts) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
            user_id, device_id, txn_id, event_id, _now_ms(),
        )

    async def txn_ids_for_events(self, user_id: str, device_id: str, event_ids: Iterable[str]) -> dict[str, str]:
        """event_id -> txnId for the events this device sent (for ``unsigned.transaction_id``)."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = await self.db.fetchall(
                "SELECT event_id, txn_id FROM client_txns WHERE user_id = ? AND device_id = ?"
                f" AND event_id IN ({','.join('?' * len(chunk))})",
                user_id, device_id, *chunk,
            )
            out.update((r[0], r[1]) for r in rows)
        return out

    # ------------------------------------------------------------------ filters

    async def store_filter(self, user_id: str, filter_json: dict[str, Any]) -> str | None:
        """The ID of ``filter_json`` among ``user_id``'s filters: the one already stored for
        the same filter (clients post theirs at every start), else a new one, unless the
        user holds ``MAX_FILTERS_PER_USER`` already (None)."""
        text = json.dumps(filter_json, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        async with self.db.transaction() as conn:
            same = await conn.fetchval(
                "SELECT filter_id FROM user_filters WHERE user_id = ? AND filter_json = ?", user_id, text
            )
            if same is not None:
                return str(same)
            held = await conn.fetchval("SELECT COUNT(*) FROM user_filters WHERE user_id = ?", user_id)
            if int(held or 0) >= MAX_FILTERS_PER_USER:
                return None
            filter_id = secrets.token_hex(8)
            await conn.execute(
                "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES (?, ?, ?)",
                user_id, filter_id, text,
            )
        return filter_id

    async def get_filter(self, user_id: str, filter_id: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT filter_json FROM user_filters WHERE user_id = ? AND filter_id = ?", user_id, filter_id
        )
        if raw is None:
            return None
        value = json.loads(raw)
        return value if isinstance(value, dict) else None


@functools.cache
def _dummy_hash(log_n: int) -> str:
    return hash_password_sync("not a password", log_n)
