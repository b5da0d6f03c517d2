"""The one outbound federation HTTP client of the server.

One aiohttp ClientSession for the whole process with a global and a per-host connection
limit, a connect and a total timeout on every request, TLS trusting the system store plus
an optional extra CA file, and X-Matrix signing of every request. Every wait is bounded:
a dead peer costs at most ``request_timeout`` and one pooled connection slot.

Key fetches (``keys``, what the key ring uses) go through a second, small session of their
own (``federation.key_fetch_max_connections``, ``..._per_host``, ``key_fetch_timeout``):
requests naming servers that never answer can fill that pool, never the federation pool.
Remote media downloads likewise have a pool of their own (``open_pool``, opened by
``media/remote.py``) and read their bodies themselves, in chunks (``stream``,
``stream_url``: the latter for a URL a remote server named, https only).

Every socket of both sessions is opened through the outbound IP-range policy
(``net.addresses``): the address is checked after DNS resolution, at connect time, so
loopback, private and the other denied ranges are never connected to, whatever name,
SRV record, ``.well-known`` delegation or redirect led there.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from homeserver.config import FederationConfig
from homeserver.crypto.keys import ServerSigningKey
from homeserver.crypto.xmatrix import authorization_header
from homeserver.errors import FederationRequestError as FederationRequestError  # raised here, known by this name
from homeserver.events.canonical import loads, loads_exact
from homeserver.events.identifiers import is_valid_server_name
from homeserver.metrics import Metrics
from homeserver.net.addresses import AddressDenied, AddressPolicy
from homeserver.net.dns import SrvResolver, parse_nameserver
from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.lru import LruCache

WELL_KNOWN_CACHE_MS = 24 * 3600 * 1000
WELL_KNOWN_ERROR_CACHE_MS = 3600 * 1000
WELL_KNOWN_CACHE_SIZE = 10_000
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Redirects followed for one .well-known look-up (each to an allowed https URL).
MAX_WELL_KNOWN_REDIRECTS = 5
# The JSON error body of a streamed GET that failed (``stream``), read at most.
MAX_ERROR_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
FEDERATION_POOL = "federation"
KEY_POOL = "keys"


class _ConnectFailed(FederationRequestError):
    """No connection to the target could be made (nothing was sent): the next SRV target
    may be tried."""


class AddressRefused(_ConnectFailed):
    """The target's address is denied by the IP-range policy: nothing was sent."""


@dataclass(frozen=True, slots=True)
class Target:
    base_url: str  # https://host:port
    host_header: str
    server_hostname: str | None  # for TLS SNI and certificate checks


def split_server_name(name: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (host, port); IPv6 literals keep their brackets."""
    if name.startswith("["):
        end = name.index("]")
        host, rest = name[: end + 1], name[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") else None
    if ":" in name:
        host, port = name.rsplit(":", 1)
        return host, int(port)
    return name, None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def make_ssl_context(extra_ca_file: str | None, verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if extra_ca_file:
        ctx.load_verify_locations(cafile=extra_ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class FederationClient:
    def __init__(
        self,
        server_name: str,
        signing_key: ServerSigningKey,
        config: FederationConfig,
        metrics: Metrics | None = None,
        dns: SrvResolver | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self.server_name = server_name
        self._key = signing_key
        self._config = config
        self._ssl = make_ssl_context(config.extra_ca_file, config.verify_tls)
        self._session: aiohttp.ClientSession | None = None
        self._key_session: aiohttp.ClientSession | None = None
        self._pools: dict[str, aiohttp.ClientSession] = {}  # open_pool's, by name
        self.policy = AddressPolicy(config.ip_range_allowlist, config.ip_range_denylist)
        self.keys = KeyFetchClient(self)  # what the key ring fetches keys with
        # Bounded: one entry per server name we tried to reach (names come from remote parties).
        self._well_known: LruCache[str, tuple[str | None, float]] = LruCache(WELL_KNOWN_CACHE_SIZE)
        if dns is None:
            nameserver = parse_nameserver(config.dns_server) if config.dns_server else None  # None: resolv.conf
            dns = SrvResolver(nameserver, timeout=min(2.0, config.connect_timeout))
        self.dns = dns
        self._metrics = metrics
        if metrics is not None:
            metrics.outbound_open_connections.set_function(self.open_connections)

    async def start(self) -> None:
        cfg = self._config
        self._session = self._new_session(
            cfg.max_connections, cfg.max_connections_per_host, cfg.request_timeout, cfg.connect_timeout
        )
        self._key_session = self._new_session(
            cfg.key_fetch_max_connections, cfg.key_fetch_max_connections_per_host,
            cfg.key_fetch_timeout, min(cfg.connect_timeout, cfg.key_fetch_timeout),
        )

    def _new_session(self, limit: int, per_host: int, total: float, connect: float) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=limit,
            limit_per_host=per_host,
            ssl=self._ssl,
            enable_cleanup_closed=True,
            ttl_dns_cache=300,
            # every socket, whatever name led to its address, passes the IP-range policy
            socket_factory=self.policy.socket_factory,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=total, connect=connect),
            json_serialize=json.dumps,
        )

    def open_pool(self, name: str, limit: int, per_host: int, total: float) -> None:
        """A further pool of its own (remote media downloads: ``media/remote.py``), with the
        same TLS and IP-range policy, its own connection limits and total timeout; closed
        with the client. ``stream`` and ``stream_url`` use it by ``name``."""
        if name in (FEDERATION_POOL, KEY_POOL) or name in self._pools:
            raise ValueError(f"pool {name!r} exists")
        self._pools[name] = self._new_session(limit, per_host, total, min(self._config.connect_timeout, total))

    async def close(self) -> None:
        for session in (self._session, self._key_session, *self._pools.values()):
            if session is not None:
                await session.close()
        self._session = self._key_session = None
        self._pools.clear()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("FederationClient used before start()")
        return self._session

    def _pool(self, pool: str) -> aiohttp.ClientSession:
        if pool in self._pools:
            return self._pools[pool]
        if pool == KEY_POOL:
            if self._key_session is None:
                raise RuntimeError("FederationClient used before start()")
            return self._key_session
        return self.session

    def open_connections(self, destination_base_url: str | None = None) -> int:
        """Sockets the pool holds: in use, being opened, and idle (keep-alive); all hosts,
        or only those of one base URL (``Target.base_url``)."""
        connector = self._session.connector if self._session else None
        if connector is None or connector.closed:
            return 0
        # aiohttp keeps no public count; read the pool (acquired includes connects in progress).
        idle: dict[Any, Any] = getattr(connector, "_conns", {})
        if destination_base_url is None:
            acquired = getattr(connector, "_acquired", ())
            return len(acquired) + sum(len(c) for c in idle.values())
        url = URL(destination_base_url)
        per_host: dict[Any, Any] = getattr(connector, "_acquired_per_host", {})
        total = 0
        for key, conns in [*per_host.items(), *idle.items()]:
            if getattr(key, "host", None) == url.host and getattr(key, "port", None) == url.port:
                total += len(conns)
        return total

    def _close_idle(self, target: Target, session: aiohttp.ClientSession) -> None:
        """Close pooled keep-alive connections to a host that just failed: they are likely
        dead too, and must not hold a socket while the destination backs off."""
        connector = session.connector
        idle: dict[Any, Any] | None = getattr(connector, "_conns", None)
        if not idle:
            return
        url = URL(target.base_url)
        for key in [k for k in idle if getattr(k, "host", None) == url.host and getattr(k, "port", None) == url.port]:
            for proto, _ in idle.pop(key, ()):
                proto.close()

    # ----------------------------------------------------------------- discovery

    async def resolve(self, destination: str) -> Target:
        """The first target ``resolve_all`` gives."""
        return (await self.resolve_all(destination))[0]

    async def resolve_all(self, destination: str, session: aiohttp.ClientSession | None = None) -> list[Target]:
        """Server discovery (server-server API, "Resolving server names"): config override,
        IP literal or explicit port, ``.well-known`` delegation, SRV records
        (``_matrix-fed._tcp`` then the deprecated ``_matrix._tcp``), then port 8448.

        With SRV records the connection goes to a record's target and port, while the
        ``Host`` header and the TLS name (SNI and certificate check) stay the server name,
        or the delegated hostname. Every record is a target, in RFC 2782 order: a request
        tries the next one when it cannot connect to one. Otherwise there is one target.
        ``session``: the pool the ``.well-known`` look-up uses (that of the request).
        """
        override = self._config.hosts.get(destination)
        if override:
            return [Target(override.rstrip("/"), destination, None)]
        host, port = split_server_name(destination)
        if is_ip_literal(host) or port is not None:
            return [Target(f"https://{host}:{port or 8448}", destination, None)]
        delegated = await self._well_known_lookup(host, session)
        if delegated:
            dhost, dport = split_server_name(delegated)
            if is_ip_literal(dhost) or dport is not None:  # steps 3.1, 3.2
                return [Target(f"https://{dhost}:{dport or 8448}", delegated, None)]
            return await self._srv_or_default(dhost)  # steps 3.3 - 3.5
        return await self._srv_or_default(host)  # steps 4 - 6

    async def _srv_or_default(self, host: str) -> list[Target]:
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            records = await self.dns.lookup(f"{service}.{host}")
            if records:
                # An IPv6 literal as target (unusual, but not forbidden) needs brackets in a URL.
                hosts = [f"[{r.target}]" if ":" in r.target else r.target for r in records]
                return [Target(f"https://{h}:{r.port}", host, host) for h, r in zip(hosts, records, strict=True)]
        return [Target(f"https://{host}:8448", host, None)]

    async def _well_known_lookup(self, host: str, session: aiohttp.ClientSession | None = None) -> str | None:
        now = self._clock.monotonic() * 1000
        cached = self._well_known.get(host)
        if cached and cached[1] > now:
            return cached[0]
        result = await self.fetch_well_known(f"https://{host}/.well-known/matrix/server", session)
        ttl = WELL_KNOWN_CACHE_MS if result else WELL_KNOWN_ERROR_CACHE_MS
        self._well_known[host] = (result, now + ttl)
        return result

    async def fetch_well_known(self, url: str, session: aiohttp.ClientSession | None = None) -> str | None:
        """The ``m.server`` of the ``.well-known/matrix/server`` document at ``url``, or
        None on any failure. Redirects are followed here, not by aiohttp: at most
        ``MAX_WELL_KNOWN_REDIRECTS``, https only, an IP-literal host checked against the
        IP-range policy before it is asked (a name is checked at connect time); the whole
        chain within ``connect_timeout``."""
        session = session or self.session
        deadline = time.monotonic() + self._config.connect_timeout
        current = URL(url)
        try:
            for _ in range(MAX_WELL_KNOWN_REDIRECTS + 1):
                if current.scheme != "https" or not current.host:
                    return None
                self.policy.check_host(current.host)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                async with session.get(
                    current, timeout=aiohttp.ClientTimeout(total=remaining), allow_redirects=False
                ) as resp:
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location")
                        if not location:
                            return None
                        current = current.join(URL(location))
                        continue
                    if resp.status != 200:
                        return None
                    body = json.loads(await resp.content.read(64 * 1024))
                server = body.get("m.server") if isinstance(body, dict) else None
                return server if isinstance(server, str) and is_valid_server_name(server) else None
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError):
            return None
        return None  # too many redirects

    # ----------------------------------------------------------------- requests

    async def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        content: Any | None = None,
        query: dict[str, str | list[str]] | None = None,
        timeout: float | None = None,
        signed: bool = True,
        pool: str = FEDERATION_POOL,
        max_bytes: int = MAX_RESPONSE_BYTES,
        exact_numbers: bool = False,
    ) -> Any:
        """Send a (signed) JSON request; return the parsed JSON reply or raise. ``pool``:
        ``KEY_POOL`` for key fetches, which have a pool of their own; ``max_bytes``: a
        smaller bound than ``MAX_RESPONSE_BYTES`` on the reply's body; ``exact_numbers``: the
        reply's floats are kept as written (``loads_exact``: replies carrying PDUs)."""
        uri = path
        if query:
            pairs = []
            for k, v in query.items():
                for item in v if isinstance(v, list) else [v]:
                    pairs.append(f"{quote(k, safe='')}={quote(item, safe='')}")
            uri = f"{path}?{'&'.join(pairs)}"
        session = self._pool(pool)
        targets = await self.resolve_all(destination, session)
        headers = {"Host": targets[0].host_header}  # the same for every target
        if signed:
            headers["Authorization"] = authorization_header(
                self._key, self.server_name, destination, method, uri, content
            )
        data = None
        if content is not None:
            data = json.dumps(content, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        try:
            return await self._send_to_any(
                session, method, destination, path, targets, uri, data, headers,
                timeout or self._config.request_timeout, min(max_bytes, MAX_RESPONSE_BYTES), exact_numbers,
            )
        except FederationRequestError as e:
            if self._metrics is not None:
                reason = "timeout" if "timed out" in str(e) else (
                    f"http_{e.status // 100}xx" if e.status else "transport")
                self._metrics.outbound_request_failures.labels(reason).inc()
                self._metrics.outbound_destination_request_failures.labels(destination).inc()
            raise
        finally:
            if self._metrics is not None:
                elapsed = time.monotonic() - started
                self._metrics.outbound_request_seconds.labels(method).observe(elapsed)
                self._metrics.outbound_destination_request_seconds.labels(destination).observe(elapsed)

    async def _send_to_any(
        self, session: aiohttp.ClientSession, method: str, destination: str, path: str, targets: list[Target],
        uri: str, data: bytes | None, headers: dict[str, str], total: float, max_bytes: int = MAX_RESPONSE_BYTES,
        exact_numbers: bool = False,
    ) -> Any:
        """Send to the first target; to the next only when no connection could be made to
        one (the request was not sent), all within one ``total`` timeout."""
        deadline = time.monotonic() + total
        for i, target in enumerate(targets):
            req_timeout = aiohttp.ClientTimeout(
                total=max(deadline - time.monotonic(), 0.001), connect=self._config.connect_timeout
            )
            try:
                return await self._send(
                    session, method, destination, path, target, uri, data, headers, req_timeout, max_bytes,
                    exact_numbers,
                )
            except FederationRequestError as e:
                if e.status is None:
                    self._close_idle(target, session)
                if not isinstance(e, _ConnectFailed) or i == len(targets) - 1 or time.monotonic() >= deadline:
                    raise
        raise AssertionError("no target")  # resolve_all gives at least one

    async def _send(
        self, session: aiohttp.ClientSession, method: str, destination: str, path: str, target: Target, uri: str,
        data: bytes | None, headers: dict[str, str], req_timeout: aiohttp.ClientTimeout,
        max_bytes: int = MAX_RESPONSE_BYTES, exact_numbers: bool = False,
    ) -> Any:
        url = URL(target.base_url + uri, encoded=True)
        try:
            # An IP literal the policy denies takes no pool slot (names: at connect time).
            self.policy.check_host(url.host or "")
        except AddressDenied as e:
            raise _ConnectFailed(destination, f"{method} {path} refused: {e.strerror}") from None
        try:
            async with session.request(
                # encoded=True: the request line must carry exactly the URI that was signed
                # (yarl would otherwise decode %3A, %21, %40 and the signature would not match).
                method, url, data=data, headers=headers, timeout=req_timeout,
                allow_redirects=False,
                # An SRV target: SNI and the certificate check use the server name, not the target.
                server_hostname=target.server_hostname,
            ) as resp:
                raw = await _read_at_most(resp.content, max_bytes + 1)
                if len(raw) > max_bytes:
                    raise FederationRequestError(destination, "response too large", resp.status)
                try:
                    body = (loads_exact if exact_numbers else loads)(raw) if raw else None
                except ValueError:
                    body = None
                if resp.status >= 300:
                    errcode = body.get("errcode") if isinstance(body, dict) else None
                    error = body.get("error") if isinstance(body, dict) else None
                    raise FederationRequestError(
                        destination,
                        f"{method} {path} returned {resp.status} {errcode or ''} {error or ''}".strip(),
                        resp.status,
                        errcode,
                        body,
                    )
                if body is None and raw:
                    raise FederationRequestError(destination, "response is not JSON", resp.status)
                return body
        except aiohttp.ConnectionTimeoutError:
            raise _ConnectFailed(destination, f"{method} {path} timed out") from None
        except TimeoutError:
            raise FederationRequestError(destination, f"{method} {path} timed out") from None
        except aiohttp.ClientConnectorError as e:
            raise _ConnectFailed(destination, f"{method} {path} failed: {e}") from None
        except aiohttp.ClientError as e:
            raise FederationRequestError(destination, f"{method} {path} failed: {e}") from None

    async def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        return await self.request("GET", destination, path, **kw)

    # ----------------------------------------------------------------- streamed GETs

    @asynccontextmanager
    async def stream(
        self, destination: str, path: str, *, query: dict[str, str] | None = None, signed: bool = True,
        pool: str = FEDERATION_POOL, timeout: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET to a server whose body the caller reads itself, in chunks, from the
        response given (status < 400: a redirect is the caller's to follow, or not). A
        status of 400 or more raises FederationRequestError with the ``errcode`` of a JSON body (read within
        ``MAX_ERROR_BYTES``). ``timeout`` (default ``request_timeout``) bounds connecting,
        the request and the whole read of the body."""
        uri = path
        if query:
            uri += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
        session = self._pool(pool)
        total = timeout or self._config.request_timeout
        deadline = time.monotonic() + total
        targets = await self.resolve_all(destination, session)
        headers = {"Host": targets[0].host_header}
        if signed:
            headers["Authorization"] = authorization_header(self._key, self.server_name, destination, "GET", uri, None)
        answered = False
        for i, target in enumerate(targets):
            url = URL(target.base_url + uri, encoded=True)
            req_timeout = aiohttp.ClientTimeout(
                total=max(deadline - time.monotonic(), 0.001), connect=self._config.connect_timeout
            )
            try:
                async with self._open(session, destination, url, headers, req_timeout, target.server_hostname) as resp:
                    answered = True
                    yield resp
                    return
            except _ConnectFailed:
                self._close_idle(target, session)
                if answered or i == len(targets) - 1 or time.monotonic() >= deadline:
                    raise

    @asynccontextmanager
    async def stream_url(
        self, url: str, *, pool: str = FEDERATION_POOL, timeout: float | None = None, label: str = "redirect",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """As ``stream``, to a URL a remote server named (a media ``Location``): https only,
        unsigned, its address checked by the IP-range policy (an IP literal before any
        connection, a name at connect time); no redirect followed. ``label`` names the
        request in errors (never the URL's host, which anyone may choose)."""
        target = URL(url)
        if target.scheme != "https" or not target.host:
            raise AddressRefused(label, "only an https URL is followed")
        req_timeout = aiohttp.ClientTimeout(total=timeout or self._config.request_timeout,
                                            connect=self._config.connect_timeout)
        async with self._open(self._pool(pool), label, target, {}, req_timeout, None) as resp:
            yield resp

    @asynccontextmanager
    async def _open(
        self, session: aiohttp.ClientSession, destination: str, url: URL, headers: dict[str, str],
        req_timeout: aiohttp.ClientTimeout, server_hostname: str | None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            self.policy.check_host(url.host or "")
        except AddressDenied as e:
            raise AddressRefused(destination, f"GET refused: {e.strerror}") from None
        try:
            async with session.get(
                url, headers=headers, timeout=req_timeout, allow_redirects=False, server_hostname=server_hostname,
            ) as resp:
                if resp.status >= 400:
                    raw = await _read_at_most(resp.content, MAX_ERROR_BYTES)
                    try:
                        body = loads(raw) if raw else None
                    except ValueError:
                        body = None
                    errcode = body.get("errcode") if isinstance(body, dict) else None
                    raise FederationRequestError(
                        destination, f"GET returned {resp.status} {errcode or ''}".strip(), resp.status,
                        errcode if isinstance(errcode, str) else None, body,
                    )
                yield resp
        except aiohttp.ConnectionTimeoutError:
            raise _ConnectFailed(destination, "GET timed out") from None
        except TimeoutError:
            raise FederationRequestError(destination, "GET timed out") from None
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, AddressDenied):
                raise AddressRefused(destination, f"GET refused: {e.os_error.strerror}") from None
            raise _ConnectFailed(destination, f"GET failed: {e}") from None
        except aiohttp.ClientError as e:
            raise FederationRequestError(destination, f"GET failed: {e}") from None

    async def put_json(self, destination: str, path: str, content: Any, **kw: Any) -> Any:
        return await self.request("PUT", destination, path, content=content, **kw)

    async def post_json(self, destination: str, path: str, content: Any, **kw: Any) -> Any:
        return await self.request("POST", destination, path, content=content, **kw)

    async def post_url_json(
        self, url: str, content: Any, *, timeout: float, max_bytes: int = 64 * 1024
    ) -> tuple[int, Any]:
        """POST JSON to a URL a client gave (a push gateway's): unsigned, through the federation
        pool and so its connection limits and IP-range policy (an IP-literal host is checked
        before asking), no redirects, at most ``timeout`` seconds and ``max_bytes`` read. The
        status and the JSON body (None when not JSON); FederationRequestError when it failed."""
        try:
            target = URL(url)
            host = target.host
        except ValueError:
            raise FederationRequestError(url[:200], "not a URL") from None
        if target.scheme not in ("http", "https") or not host:
            raise FederationRequestError(url[:200], "not an http(s) URL")
        try:
            self.policy.check_host(host)
            async with self.session.post(
                target, json=content, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await _read_at_most(resp.content, max_bytes)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                return resp.status, body
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: IDNA
            raise FederationRequestError(url[:200], f"POST failed: {type(e).__name__}") from e


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, until its end or ``limit`` bytes (``StreamReader.read(n)`` alone answers
    only what has arrived so far, which cuts a body that comes in several chunks)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class KeyFetchClient:
    """The client as the key ring sees it (``crypto.keyring.KeyClient``): the same
    requests, through the key-fetch pool."""

    def __init__(self, client: FederationClient) -> None:
        self._client = client

    async def get_json(self, destination: str, path: str, **kw: Any) -> Any:
        return await self._client.request("GET", destination, path, pool=KEY_POOL, **kw)

    async def post_json(self, destination: str, path: str, content: Any, **kw: Any) -> Any:
        return await self._client.request("POST", destination, path, content=content, pool=KEY_POOL, **kw)
