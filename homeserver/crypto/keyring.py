"""Remote servers' verify keys: a bounded in-memory cache over the database cache over
fetching.

Keys come from the origin's ``/_matrix/key/v2/server`` (self-signature, server name and
validity checked), or, when that fails, from the configured notary servers
(``POST /_matrix/key/v2/query``, which must carry both the origin's and the notary's
signature). Concurrent look-ups for one server share a single fetch, and every fetch has
a timeout: a dead server costs one bounded request, not one per caller.

Anyone can name any server in an Authorization header, so what a name costs is bounded:
at most ``max_concurrent_fetches`` fetches run at once (others wait, within the fetch
timeout); a server is not asked again within ``REFETCH_INTERVAL_MS`` of a successful
fetch (a made-up key ID cannot make us fetch on every request) nor within
``FAILED_FETCH_BACKOFF_MS`` of a failed one; those times are kept for at most
``failure_cache_size`` servers (least recently used dropped, expired ones skipped); and
the warning for a failed fetch is rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from homeserver.config import KeyServerConfig
from homeserver.crypto.keys import ServerSigningKey
from homeserver.errors import FederationRequestError
from homeserver.events.canonical import decode_b64
from homeserver.storage.keys import KeyStore, StoredKey
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.lru import LruCache
from homeserver.util.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

MEMORY_CACHE_SIZE = 10_000
# After a failed fetch, do not ask the same server again for this long.
FAILED_FETCH_BACKOFF_MS = 30_000
# After a successful fetch, do not ask the same server again (for a key ID it did not
# publish) for this long.
REFETCH_INTERVAL_MS = 30_000
DEFAULT_MAX_CONCURRENT_FETCHES = 32
DEFAULT_FAILURE_CACHE_SIZE = 10_000
DEFAULT_WARNINGS_PER_MINUTE = 10


class KeyClient(Protocol):
    """What the key ring asks of the federation client (``net.client.FederationClient``);
    crypto/ does not import net/, which signs its requests with crypto/."""

    async def get_json(self, destination: str, path: str, **kw: Any) -> Any: ...

    async def post_json(self, destination: str, path: str, content: Any, **kw: Any) -> Any: ...


class KeyNotFoundError(Exception):
    """No valid key with that ID could be found for that server."""


def parse_key_document(
    doc: Any, server_name: str, now_ms: int
) -> tuple[list[StoredKey], dict[str, Any]]:
    """Check a ``/_matrix/key/v2/server`` document; return its keys. Raises ValueError."""
    if not isinstance(doc, dict):
        raise ValueError("key document is not a JSON object")
    if doc.get("server_name") != server_name:
        raise ValueError(f"key document is for {doc.get('server_name')!r}, not {server_name!r}")
    valid_until = doc.get("valid_until_ts")
    if not isinstance(valid_until, int) or isinstance(valid_until, bool):
        raise ValueError("key document has no integer valid_until_ts")
    verify_keys = doc.get("verify_keys")
    if not isinstance(verify_keys, dict) or not verify_keys:
        raise ValueError("key document has no verify_keys")
    keys: list[StoredKey] = []
    for key_id, entry in verify_keys.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise ValueError(f"verify key {key_id} is malformed")
        if not key_id.startswith("ed25519:"):
            continue
        vk = decode_verify_key_bytes(key_id, decode_b64(entry["key"]))
        try:
            verify_signed_json(doc, server_name, vk)
        except SignatureVerifyException:
            raise ValueError(f"key document is not signed by its own key {key_id}") from None
        keys.append(StoredKey(server_name, key_id, entry["key"], valid_until, None))
    if not keys:
        raise ValueError("key document has no ed25519 key")
    old = doc.get("old_verify_keys") or {}
    if isinstance(old, dict):
        for key_id, entry in old.items():
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("key"), str)
                and isinstance(entry.get("expired_ts"), int)
                and key_id.startswith("ed25519:")
            ):
                keys.append(
                    StoredKey(server_name, key_id, entry["key"], entry["expired_ts"], entry["expired_ts"])
                )
    return keys, doc


class KeyRing:
    def __init__(
        self,
        server_name: str,
        own_key: ServerSigningKey,
        store: KeyStore,
        client: KeyClient,
        key_servers: list[KeyServerConfig],
        fetch_timeout: float,
        clock: Clock = SYSTEM_CLOCK,
        *,
        max_concurrent_fetches: int = DEFAULT_MAX_CONCURRENT_FETCHES,
        failure_cache_size: int = DEFAULT_FAILURE_CACHE_SIZE,
        warnings_per_minute: int = DEFAULT_WARNINGS_PER_MINUTE,
    ) -> None:
        self.server_name = server_name
        self._own_key = own_key
        self._store = store
        self._client = client
        self._key_servers = key_servers
        self._timeout = fetch_timeout
        self._clock = clock
        self._memory: LruCache[tuple[str, str], StoredKey] = LruCache(MEMORY_CACHE_SIZE)
        self._inflight: dict[str, asyncio.Future[None]] = {}
        # server name -> time (ms) before which it is not fetched again
        self._next_fetch: LruCache[str, int] = LruCache(failure_cache_size)
        self._fetch_slots = asyncio.Semaphore(max_concurrent_fetches)
        self._failure_log = RateLimitedLog(log, warnings_per_minute, 60.0, clock)
        self.fetches = 0  # number of remote fetches started (observability, tests)

    async def get_verify_key(
        self, server_name: str, key_id: str, *, valid_at_ms: int | None = None
    ) -> Any:
        """A nacl VerifyKey for (server, key ID) valid at ``valid_at_ms`` (default: now)."""
        if server_name == self.server_name and key_id == self._own_key.key_id:
            return self._own_key.signing_key.verify_key
        at = self._clock.time_ms() if valid_at_ms is None else valid_at_ms
        key = await self._lookup(server_name, key_id)
        if key is None or key.valid_until_ts < at:
            if key is not None and key.expired_ts is not None:
                raise KeyNotFoundError(f"key {key_id} of {server_name} expired at {key.expired_ts}")
            await self._fetch_coalesced(server_name, key_id)
            key = await self._lookup(server_name, key_id)
        if key is None:
            raise KeyNotFoundError(f"no key {key_id} for {server_name}")
        if key.valid_until_ts < at:
            raise KeyNotFoundError(f"key {key_id} of {server_name} is not valid at {at}")
        return decode_verify_key_bytes(key_id, decode_b64(key.verify_key))

    async def cached_document(self, server_name: str) -> dict[str, Any] | None:
        """The last verified key document of ``server_name`` as it was received (the
        server's own signature, and a notary's if it came through one), or None."""
        return await self._store.get_document(server_name)

    async def refresh(self, server_name: str) -> None:
        """Fetch the server's keys now (for the notary endpoints), bounded like every other
        fetch: shared with one already in flight, within the concurrency limit, and not
        at all within ``REFETCH_INTERVAL_MS`` of the last fetch or the failure backoff."""
        if server_name != self.server_name:
            await self._fetch_coalesced(server_name, None)

    async def _lookup(self, server_name: str, key_id: str) -> StoredKey | None:
        mem = self._memory.get((server_name, key_id))
        if mem is not None:
            return mem
        stored = await self._store.get_key(server_name, key_id)
        if stored is not None:
            self._remember(stored)
        return stored

    def _remember(self, key: StoredKey) -> None:
        self._memory[(key.server_name, key.key_id)] = key

    def _recently_fetched(self, server_name: str) -> bool:
        until = self._next_fetch.peek(server_name)
        if until is None:
            return False
        if until <= self._clock.time_ms():
            self._next_fetch.pop(server_name)  # expired: forget it
            return False
        return True

    async def _fetch_coalesced(self, server_name: str, key_id: str | None) -> None:
        if self._recently_fetched(server_name):
            return
        fut = self._inflight.get(server_name)
        if fut is None:
            # A fetch that finished while this caller was reading the database may
            # already have brought the key.
            known = None if key_id is None else self._memory.peek((server_name, key_id))
            if known is not None and known.valid_until_ts >= self._clock.time_ms():
                return
            fut = asyncio.get_running_loop().create_future()
            self._inflight[server_name] = fut
            try:
                await self._fetch_in_slot(server_name)
            except _NoFetchSlot:
                pass  # not tried: no backoff for the server, the callers get no key
            except Exception as e:
                self._failure_log.warning("key fetch failed", extra={"server": server_name, "error": str(e)})
                self._next_fetch[server_name] = self._clock.time_ms() + FAILED_FETCH_BACKOFF_MS
            finally:
                del self._inflight[server_name]
                fut.set_result(None)
            return
        await asyncio.shield(fut)

    async def _fetch_in_slot(self, server_name: str) -> None:
        """``_fetch`` once one of the ``max_concurrent_fetches`` slots is free (waiting
        at most the fetch timeout for one)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._fetch_slots.acquire()
        except TimeoutError:
            raise _NoFetchSlot() from None
        try:
            await self._fetch(server_name)
        finally:
            self._fetch_slots.release()

    async def _fetch(self, server_name: str) -> None:
        self.fetches += 1
        errors: list[str] = []
        try:
            async with asyncio.timeout(self._timeout):
                doc = await self._client.get_json(
                    server_name, "/_matrix/key/v2/server", timeout=self._timeout, signed=False
                )
            keys, doc = parse_key_document(doc, server_name, self._clock.time_ms())
            await self._store_keys(server_name, doc, keys)
            return
        except (FederationRequestError, ValueError, TimeoutError) as e:
            errors.append(f"direct: {e}")
        for notary in self._key_servers:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._fetch_via_notary(notary, server_name)
                return
            except (FederationRequestError, ValueError, TimeoutError, KeyNotFoundError) as e:
                errors.append(f"{notary.server_name}: {e}")
        raise KeyNotFoundError("; ".join(errors))

    async def _fetch_via_notary(self, notary: KeyServerConfig, server_name: str) -> None:
        reply = await self._client.post_json(
            notary.server_name,
            "/_matrix/key/v2/query",
            {"server_keys": {server_name: {}}},
            timeout=self._timeout,
        )
        docs = reply.get("server_keys") if isinstance(reply, dict) else None
        if not isinstance(docs, list):
            raise ValueError("notary reply has no server_keys list")
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("server_name") != server_name:
                continue
            keys, doc = parse_key_document(doc, server_name, self._clock.time_ms())
            await self._check_notary_signature(notary, doc)
            await self._store_keys(server_name, doc, keys)
            return
        raise ValueError(f"notary returned no keys for {server_name}")

    async def _check_notary_signature(self, notary: KeyServerConfig, doc: dict[str, Any]) -> None:
        sigs = doc.get("signatures", {}).get(notary.server_name, {})
        for key_id in sigs:
            if notary.verify_keys:
                b64 = notary.verify_keys.get(key_id)
                if b64 is None:
                    continue
                vk = decode_verify_key_bytes(key_id, decode_b64(b64))
            else:
                vk = await self.get_verify_key(notary.server_name, key_id)
            try:
                verify_signed_json(doc, notary.server_name, vk)
                return
            except SignatureVerifyException:
                continue
        raise ValueError(f"keys from notary {notary.server_name} lack its valid signature")

    async def _store_keys(self, server_name: str, doc: dict[str, Any], keys: list[StoredKey]) -> None:
        await self._store.store_document(server_name, doc, keys, self._clock.time_ms())
        for key in keys:
            self._remember(key)
        self._next_fetch[server_name] = self._clock.time_ms() + REFETCH_INTERVAL_MS

    @property
    def fetch_times_kept(self) -> int:
        """Servers whose last fetch time is remembered (bounded by failure_cache_size)."""
        return len(self._next_fetch)


class _NoFetchSlot(Exception):
    """Every fetch slot stayed busy for the whole fetch timeout."""
