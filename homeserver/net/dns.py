"""A small async DNS client for SRV look-ups in federation server discovery.

Server discovery (server-server API, "Resolving server names") needs the SRV records
``_matrix-fed._tcp.<host>`` and ``_matrix._tcp.<host>``; the standard library resolves
only addresses. This module asks one nameserver (the first ``nameserver`` of
/etc/resolv.conf, or ``federation.dns_server``) over UDP with an asyncio datagram
endpoint, falling back to TCP when the answer is truncated. Every wait is bounded: a
``timeout`` per attempt and at most one retry. Answers are cached for their TTL (capped)
in a bounded cache; a name with no records (NXDOMAIN or an empty answer) gives ``None``,
as does a failed look-up (cached briefly, so a dead nameserver does not stall every
request). Records come back ordered by priority, then by a weighted random choice
(RFC 2782). Addresses of SRV targets are left to the system resolver.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TYPE_SRV = 33
CLASS_IN = 1
RCODE_NOERROR = 0
RCODE_NXDOMAIN = 3
DNS_PORT = 53
MAX_UDP_PAYLOAD = 4096


class DnsError(Exception):
    """A malformed DNS message, or no usable answer from the nameserver."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot; "." (service not available) is dropped
    ttl: int


# ----------------------------------------------------------------- wire format


def encode_name(name: str) -> bytes:
    """A domain name in DNS wire format (length-prefixed labels, no compression)."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DnsError(f"invalid label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise DnsError(f"name too long: {name!r}")
    return bytes(out)


def build_query(query_id: int, name: str, qtype: int = TYPE_SRV) -> bytes:
    """One question, recursion desired, with an EDNS0 OPT record advertising a 4 KiB UDP size."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 1)
    question = encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)
    opt = b"\x00" + struct.pack("!HHIH", 41, MAX_UDP_PAYLOAD, 0, 0)
    return header + question + opt


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """Decode the name at ``offset`` (following compression pointers); return it and the
    offset just after it in the original position."""
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    pos = offset
    while True:
        if pos >= len(data):
            raise DnsError("name runs past the message")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise DnsError("truncated compression pointer")
            if end is None:
                end = pos + 2
            jumps += 1
            if jumps > 32:
                raise DnsError("compression pointer loop")
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length & 0xC0:
            raise DnsError("unsupported label type")
        pos += 1
        if length == 0:
            break
        if pos + length > len(data):
            raise DnsError("label runs past the message")
        labels.append(data[pos : pos + length].decode("ascii", errors="replace"))
        pos += length
    return ".".join(labels), end if end is not None else pos


@dataclass(frozen=True, slots=True)
class Response:
    query_id: int
    rcode: int
    truncated: bool
    question: str
    records: list[SrvRecord]


def parse_response(data: bytes) -> Response:
    """Parse a DNS response: header, questions, and the SRV records of the answer section
    (other record types, e.g. a CNAME chain, are skipped)."""
    if len(data) < 12:
        raise DnsError("message shorter than its header")
    query_id, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    if not flags & 0x8000:
        raise DnsError("not a response")
    pos = 12
    question = ""
    for i in range(qdcount):
        qname, pos = read_name(data, pos)
        if i == 0:
            question = qname
        pos += 4
    records: list[SrvRecord] = []
    for _ in range(ancount):
        _, pos = read_name(data, pos)
        if pos + 10 > len(data):
            raise DnsError("truncated resource record")
        rtype, rclass, ttl, rdlength = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        if pos + rdlength > len(data):
            raise DnsError("truncated record data")
        if rtype == TYPE_SRV and rclass == CLASS_IN:
            if rdlength < 7:
                raise DnsError("SRV record too short")
            priority, weight, port = struct.unpack("!HHH", data[pos : pos + 6])
            target, _ = read_name(data, pos + 6)
            if target not in ("", "."):
                records.append(SrvRecord(priority, weight, port, target.rstrip("."), ttl))
        pos += rdlength
    return Response(query_id, flags & 0x000F, bool(flags & 0x0200), question, records)


def order_srv(records: list[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority; within one priority a weighted random choice,
    repeated over the records not chosen yet (weight 0 is picked rarely, never excluded)."""
    choose = rng or random.Random()
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = choose.randint(0, total)
            running = 0
            for i, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    out.append(group.pop(i))
                    break
    return out


# ----------------------------------------------------------------- configuration


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty nameserver address")
    if spec.startswith("["):
        end = spec.index("]")
        host, rest = spec[1:end], spec[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") else DNS_PORT
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
        port = int(port_text)
    else:
        host, port = spec, DNS_PORT
    if not host or not 0 < port < 65536:
        raise ValueError(f"invalid nameserver address {spec!r}")
    return host, port


def nameserver_from_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[str, int]:
    """The first ``nameserver`` line of resolv.conf; 127.0.0.1:53 if there is none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1].split("%", 1)[0], DNS_PORT
    except OSError:
        pass
    return "127.0.0.1", DNS_PORT


# ----------------------------------------------------------------- transport


class _UdpQuery(asyncio.DatagramProtocol):
    def __init__(self, query_id: int, name: str) -> None:
        self.query_id = query_id
        self.name = name.rstrip(".").lower()
        self.answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            response = parse_response(data)
        except DnsError:
            return  # not ours or garbage: keep waiting for the real answer
        if response.query_id != self.query_id or response.question.rstrip(".").lower() != self.name:
            return
        if not self.answer.done():
            self.answer.set_result(response)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or DnsError("socket closed"))


class SrvResolver:
    """SRV look-ups against one nameserver, with a bounded TTL cache."""

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
        rng: random.Random | None = None,
    ) -> None:
        self.nameserver = nameserver or nameserver_from_resolv_conf()
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self._cache_size = cache_size
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._error_ttl = error_ttl
        self._rng = rng or random.Random()
        self._cache: OrderedDict[str, tuple[list[SrvRecord] | None, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[list[SrvRecord] | None]] = {}

    async def lookup(self, name: str) -> list[SrvRecord] | None:
        """The SRV records of ``name`` in RFC 2782 order, or None when there are none or the
        look-up failed. Takes at most ``attempts * timeout`` seconds (twice that if a
        truncated answer has to be fetched again over TCP)."""
        key = name.rstrip(".").lower()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > now:
                self._cache.move_to_end(key)
                return order_srv(cached[0], self._rng) if cached[0] else None
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(key))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        records = await asyncio.shield(pending)
        return order_srv(records, self._rng) if records else None

    async def _resolve(self, name: str) -> list[SrvRecord] | None:
        records: list[SrvRecord] | None
        try:
            response = await self._query(name)
        except (DnsError, OSError, TimeoutError) as e:
            logger.info("SRV look-up of %s via %s:%d failed: %s", name, *self.nameserver, e)
            self._store(name, None, self._error_ttl)
            return None
        if response.rcode == RCODE_NXDOMAIN or (response.rcode == RCODE_NOERROR and not response.records):
            self._store(name, None, self._negative_ttl)
            return None
        if response.rcode != RCODE_NOERROR:
            logger.info("SRV look-up of %s: rcode %d", name, response.rcode)
            self._store(name, None, self._error_ttl)
            return None
        records = response.records
        self._store(name, records, min(r.ttl for r in records))
        return records

    def _store(self, name: str, records: list[SrvRecord] | None, ttl: float) -> None:
        ttl = min(max(ttl, 0.0), self._max_ttl)
        if ttl <= 0 or self._cache_size <= 0:
            return
        self._cache[name] = (records, time.monotonic() + ttl)
        self._cache.move_to_end(name)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _query(self, name: str) -> Response:
        last: Exception = DnsError("no attempt made")
        for _ in range(self.attempts):
            query_id = secrets.randbelow(0x10000)
            try:
                response = await asyncio.wait_for(self._udp(query_id, name), self.timeout)
                if response.truncated:
                    response = await asyncio.wait_for(self._tcp(query_id, name), self.timeout)
                return response
            except (TimeoutError, OSError, DnsError) as e:
                last = e if not isinstance(e, TimeoutError) else TimeoutError(f"no answer in {self.timeout} s")
        raise last

    async def _udp(self, query_id: int, name: str) -> Response:
        loop = asyncio.get_running_loop()
        host, port = self.nameserver
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UdpQuery(query_id, name), remote_addr=(host, port)
        )
        try:
            transport.sendto(build_query(query_id, name))
            return await protocol.answer
        finally:
            transport.close()

    async def _tcp(self, query_id: int, name: str) -> Response:
        host, port = self.nameserver
        reader, writer = await asyncio.open_connection(host, port)
        try:
            query = build_query(query_id, name)
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            response = parse_response(await reader.readexactly(length))
        except asyncio.IncompleteReadError:
            raise DnsError("TCP answer cut short") from None
        finally:
            writer.close()
        if response.query_id != query_id:
            raise DnsError("TCP answer for another query")
        return response
