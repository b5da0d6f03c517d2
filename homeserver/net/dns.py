"""SRV look-ups for federation server discovery, with dnspython's asyncio resolver.

Server discovery (server-server API, "Resolving server names") needs the SRV records
``_matrix-fed._tcp.<host>`` and ``_matrix._tcp.<host>``; the standard library resolves
only addresses. dnspython speaks the protocol (UDP, TCP after a truncated answer, retries
within a bounded lifetime) and orders the records as RFC 2782 says; this module adds a
bounded cache that also remembers failures briefly, so a dead nameserver does not stall
every request, and shares one query among concurrent look-ups of a name. Addresses of
SRV targets are left to the HTTP client's (system) resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset
from dns.rdtypes.IN.SRV import SRV

from homeserver.util.clock import SYSTEM_CLOCK, Clock
from homeserver.util.hostport import parse_nameserver
from homeserver.util.lru import LruCache

__all__ = ["SrvRecord", "SrvResolver", "parse_nameserver", "srv_records"]

logger = logging.getLogger(__name__)

DNS_PORT = 53
RESOLV_CONF = "/etc/resolv.conf"
# EDNS0 payload size: what fits in one unfragmented datagram on any path (the 2020 DNS
# flag day's figure); a larger answer comes truncated and is fetched again over TCP.
EDNS_PAYLOAD = 1232


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "." (service not available) is dropped
    ttl: int


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SrvResolver:
    """SRV look-ups against one nameserver (``host``, ``port``), or those of resolv.conf
    (127.0.0.1 when it names none), with a bounded TTL cache.

    A look-up takes at most ``attempts * timeout`` seconds: dnspython retries within that
    lifetime (after a short back-off), and a hard deadline bounds the whole of it.
    """

    def __init__(
        self,
        nameserver: tuple[str, int] | None = None,
        *,
        timeout: float = 2.0,
        attempts: int = 2,
        cache_size: int = 1024,
        max_ttl: float = 3600.0,
        negative_ttl: float = 300.0,
        error_ttl: float = 30.0,
        resolv_conf: str = RESOLV_CONF,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.nameserver = nameserver
        self.timeout = timeout
        self.lifetime = timeout * max(1, attempts)
        self._resolv_conf = resolv_conf
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._error_ttl = error_ttl
        self._clock = clock
        # name -> (its SRV records, or None for "none", and the expiry on the clock's monotonic time)
        self._cache: LruCache[str, tuple[dns.rrset.RRset | None, float]] | None = (
            LruCache(cache_size) if cache_size > 0 else None
        )
        self._inflight: dict[str, asyncio.Future[dns.rrset.RRset | None]] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def lookup(self, name: str) -> list[SrvRecord] | None:
        """The SRV records of ``name`` in RFC 2782 order (ascending priority, then a
        weighted random order within a priority; drawn again on every call), or None when
        there are none or the look-up failed."""
        key = name.rstrip(".").lower()
        cached = self._cache.get(key) if self._cache is not None else None
        if cached is not None and cached[1] > self._clock.monotonic():
            rrset = cached[0]
        else:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._resolve(key))
                self._inflight[key] = pending
                pending.add_done_callback(lambda _: self._inflight.pop(key, None))
            rrset = await asyncio.shield(pending)
        return srv_records(rrset) or None

    async def _resolve(self, name: str) -> dns.rrset.RRset | None:
        try:
            resolver = await self._get_resolver()
            async with asyncio.timeout(self.lifetime):
                answer = await resolver.resolve(dns.name.from_text(name), dns.rdatatype.SRV, lifetime=self.lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._store(name, None, self._negative_ttl)
            return None
        except (dns.exception.DNSException, OSError, TimeoutError) as e:
            logger.info("SRV look-up of %s failed: %s", name, e)
            self._store(name, None, self._error_ttl)
            return None
        rrset = answer.rrset
        if rrset is None or not srv_records(rrset):
            self._store(name, None, self._negative_ttl)
            return None
        self._store(name, rrset, rrset.ttl)
        return rrset

    def _store(self, name: str, rrset: dns.rrset.RRset | None, ttl: float) -> None:
        ttl = min(max(ttl, 0.0), self._max_ttl)
        if ttl > 0 and self._cache is not None:
            self._cache[name] = (rrset, self._clock.monotonic() + ttl)

    async def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is not None:
            return self._resolver
        if self.nameserver is None:
            try:
                resolver = dns.asyncresolver.Resolver(filename=self._resolv_conf)
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1"]
        else:
            host, port = self.nameserver
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = await _addresses(host, port)
            resolver.port = port
        resolver.timeout = self.timeout
        resolver.lifetime = self.lifetime
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        self._resolver = resolver
        return resolver


async def _addresses(host: str, port: int) -> list[str]:
    """The nameserver's addresses: dnspython takes IP addresses only."""
    if _is_ip(host):
        return [host]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def srv_records(rrset: dns.rrset.RRset | None) -> list[SrvRecord]:
    """The SRV records of ``rrset`` in RFC 2782 order (dnspython's processing order: by
    priority, then weighted random; a weight of 0 counts as 0.1), without target "."."""
    if rrset is None:
        return []
    ttl = rrset.ttl
    out = []
    for rdata in rrset.processing_order():
        if not isinstance(rdata, SRV) or rdata.target == dns.name.root:
            continue
        target = rdata.target.to_text(omit_final_dot=True)
        out.append(SrvRecord(rdata.priority, rdata.weight, rdata.port, target, ttl))
    return out
