"""The IP-range policy of every outbound connection (server-side request forgery guard).

Any server name a remote party hands us (an X-Matrix ``origin``, a room alias's or user
ID's server, a ``.well-known`` delegation or redirect, an SRV target) would otherwise make
this server connect wherever its DNS points: to loopback services, the operator's private
network or a cloud metadata endpoint. ``AddressPolicy`` decides per IP address, and
``socket_factory`` applies it to the exact address each socket is about to connect to:
after DNS resolution, at connect time, so a DNS answer that changes between a check and
the connection (rebinding) is still caught, and IP-literal names are judged the same way.

Order of the decision for one address (an IPv4-mapped IPv6 address is judged as its IPv4
address):

1. in ``federation.ip_range_denylist``: denied;
2. in ``federation.ip_range_allowlist``: allowed;
3. in ``DEFAULT_DENIED_RANGES``: denied;
4. a 6to4 (2002::/16) or NAT64 (64:ff9b::/96) address is judged as the IPv4 address it
   carries;
5. otherwise allowed.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable

from aiohappyeyeballs import AddrInfoType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses no federation peer lives at (IANA special-purpose registries): denied unless
# the allowlist names them.
DEFAULT_DENIED_RANGES: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"; 0.0.0.0 (unspecified) connects to the local host
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local (cloud metadata endpoints live here)
    "172.16.0.0/12",  # private (RFC 1918)
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation (TEST-NET-1)
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  # private (RFC 1918)
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation (TEST-NET-2)
    "203.0.113.0/24",  # documentation (TEST-NET-3)
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::/96",  # IPv4-compatible (deprecated)
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID)
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "fc00::/7",  # unique local (ULA)
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressDenied(OSError):
    """A connection to this address is not allowed by the outbound IP-range policy."""

    def __init__(self, address: str) -> None:
        super().__init__(errno.EACCES, f"{address} is in a denied IP range (federation.ip_range_*)")
        self.address = address


def parse_ranges(ranges: Iterable[str]) -> list[IPNetwork]:
    """CIDRs (or single addresses) as networks; ValueError names a bad one."""
    out: list[IPNetwork] = []
    for text in ranges:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR range") from None
    return out


def parse_address(host: str) -> IPAddress | None:
    """An IP address from a socket address or URL host (brackets and an IPv6 zone
    stripped); None when ``host`` is not an IP address."""
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class AddressPolicy:
    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = parse_ranges(allow)
        self.deny = parse_ranges(deny)
        self.default_denied = parse_ranges(DEFAULT_DENIED_RANGES)

    def allows(self, address: str | IPAddress) -> bool:
        """Whether a connection to ``address`` (an IP address) is allowed; anything that
        does not parse as one is denied."""
        ip = parse_address(address) if isinstance(address, str) else address
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.deny):
            return False
        if any(ip in net for net in self.allow):
            return True
        if any(ip in net for net in self.default_denied):
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = ip.sixtofour
            if embedded is None and ip in _NAT64:
                embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if embedded is not None:
                return self.allows(embedded)
        return True

    def check(self, address: str) -> None:
        """Raise AddressDenied unless ``address`` is allowed."""
        if not self.allows(address):
            raise AddressDenied(address)

    def check_host(self, host: str) -> None:
        """Raise AddressDenied when ``host`` (a URL host) is an IP literal that is not
        allowed; DNS names are judged at connect time, by ``socket_factory``."""
        ip = parse_address(host)
        if ip is not None and not self.allows(ip):
            raise AddressDenied(host.strip("[]"))

    def socket_factory(self, addr_info: AddrInfoType) -> socket.socket:
        """aiohttp's ``TCPConnector(socket_factory=...)``: the socket for one resolved
        address, or AddressDenied before any packet is sent to it."""
        family, type_, proto, _, sockaddr = addr_info
        self.check(str(sockaddr[0]))
        return socket.socket(family=family, type=type_, proto=proto)
