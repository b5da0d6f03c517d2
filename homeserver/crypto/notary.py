"""The notary side of key distribution: other servers' keys served from our cache, with our
signature added (``POST /_matrix/key/v2/query``, ``GET /_matrix/key/v2/query/{serverName}``).

A server's answer is its last key document as it signed it (verified when we fetched it:
``keyring.parse_key_document``), to which we add our own signature; the original
signatures stay. When we hold no document, or it does not cover the key IDs asked for,
or it is not valid until ``minimum_valid_until_ts`` (default: now), the key ring fetches
it from the server first; if that fails the cached document, if any, is served all the
same (a notary's use is to vouch for keys of servers that are down), and a server we know
nothing of is left out of the answer. Our own keys are served freshly signed.

What one query may cost is bounded: at most ``MAX_SERVERS_PER_QUERY`` servers and
``MAX_KEY_IDS_PER_SERVER`` key IDs each (more: the query is refused), fetches for at most
``FETCHES_PER_QUERY`` of its servers at once, and each fetch is the key ring's own (one
per server at a time, shared; at most ``federation_limits.max_concurrent_key_fetches``
over all; never again within the refetch interval or the failure backoff), so a query
naming many servers, or naming one again and again, cannot fan out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from signedjson.sign import sign_json

from homeserver.crypto.keyring import KeyRing
from homeserver.crypto.keys import ServerSigningKey
from homeserver.events.identifiers import is_valid_server_name
from homeserver.metrics import Metrics
from homeserver.util.clock import SYSTEM_CLOCK, Clock

MAX_SERVERS_PER_QUERY = 100
MAX_KEY_IDS_PER_SERVER = 20
FETCHES_PER_QUERY = 10


class NotaryQueryError(ValueError):
    """A malformed notary query; ``param`` is True when a parameter (not the body) is wrong."""

    def __init__(self, message: str, *, param: bool = False) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class KeyCriteria:
    """What is asked of one server's keys: these key IDs (none: any), valid until then."""

    key_ids: frozenset[str]
    minimum_valid_until_ts: int


def _timestamp(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise NotaryQueryError(f"{where}: minimum_valid_until_ts must be a non-negative integer")
    return value


def _server(name: Any) -> str:
    if not isinstance(name, str) or not is_valid_server_name(name):
        raise NotaryQueryError(f"{name!r} is not a valid server name")
    return name


def parse_query_body(body: Any, now_ms: int) -> dict[str, KeyCriteria]:
    """The criteria of a ``POST /key/v2/query`` body; raises NotaryQueryError."""
    if not isinstance(body, dict) or not isinstance(body.get("server_keys"), dict):
        raise NotaryQueryError("server_keys must be an object of server names")
    servers = body["server_keys"]
    if len(servers) > MAX_SERVERS_PER_QUERY:
        raise NotaryQueryError(f"at most {MAX_SERVERS_PER_QUERY} servers per query", param=True)
    criteria: dict[str, KeyCriteria] = {}
    for name, keys in servers.items():
        server = _server(name)
        if not isinstance(keys, dict):
            raise NotaryQueryError(f"server_keys.{server}: must be an object of key IDs")
        if len(keys) > MAX_KEY_IDS_PER_SERVER:
            raise NotaryQueryError(f"server_keys.{server}: at most {MAX_KEY_IDS_PER_SERVER} key IDs", param=True)
        wanted = now_ms
        for key_id, crit in keys.items():
            if not isinstance(crit, dict):
                raise NotaryQueryError(f"server_keys.{server}.{key_id}: must be an object")
            if "minimum_valid_until_ts" in crit:
                wanted = max(wanted, _timestamp(crit["minimum_valid_until_ts"], f"server_keys.{server}.{key_id}"))
        criteria[server] = KeyCriteria(frozenset(keys), wanted)
    return criteria


def parse_query_params(server_name: str, minimum_valid_until_ts: str | None, now_ms: int) -> dict[str, KeyCriteria]:
    """The criteria of ``GET /key/v2/query/{serverName}``; raises NotaryQueryError (param)."""
    try:
        server = _server(server_name)
        wanted = now_ms
        if minimum_valid_until_ts is not None:
            if not minimum_valid_until_ts.isdigit():
                raise NotaryQueryError("minimum_valid_until_ts must be a non-negative integer")
            wanted = max(wanted, _timestamp(int(minimum_valid_until_ts), "query"))
    except NotaryQueryError as e:
        raise NotaryQueryError(str(e), param=True) from None
    return {server: KeyCriteria(frozenset(), wanted)}


def satisfies(doc: dict[str, Any] | None, criteria: KeyCriteria) -> bool:
    """Whether a cached document answers the criteria without a fetch."""
    if doc is None:
        return False
    valid_until = doc.get("valid_until_ts")
    if not isinstance(valid_until, int) or valid_until < criteria.minimum_valid_until_ts:
        return False
    known = set(doc.get("verify_keys") or {}) | set(doc.get("old_verify_keys") or {})
    return criteria.key_ids <= known


class KeyNotary:
    """Answers notary queries from the key ring's cache, fetching through it when needed."""

    def __init__(
        self,
        server_name: str,
        key: ServerSigningKey,
        keyring: KeyRing,
        own_document: Callable[[], dict[str, Any]],
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self._key = key
        self._keyring = keyring
        self._own_document = own_document
        self._counted = metrics.key_notary_servers
        self.clock = clock

    async def query(self, criteria: dict[str, KeyCriteria]) -> list[dict[str, Any]]:
        """The signed key documents answering ``criteria`` (servers with none left out)."""
        slots = asyncio.Semaphore(FETCHES_PER_QUERY)
        answers = await asyncio.gather(*(self._answer(name, crit, slots) for name, crit in criteria.items()))
        return [doc for doc in answers if doc is not None]

    async def _answer(self, server: str, criteria: KeyCriteria, slots: asyncio.Semaphore) -> dict[str, Any] | None:
        if server == self.server_name:
            self._counted.labels("own").inc()
            return self._own_document()
        doc = await self._keyring.cached_document(server)
        result = "cached"
        if not satisfies(doc, criteria):
            async with slots:
                await self._keyring.refresh(server)
            fresh = await self._keyring.cached_document(server)
            if fresh is not None and fresh != doc:
                doc, result = fresh, "fetched"
            else:
                result = "stale"
        if doc is None:
            self._counted.labels("none").inc()
            return None
        self._counted.labels(result).inc()
        signed: dict[str, Any] = sign_json(doc, self.server_name, self._key.signing_key)
        return signed
