"""Parsing ``host[:port]`` strings (the DNS server of server discovery)."""

from __future__ import annotations


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty nameserver address")
    if spec.startswith("["):
        end = spec.index("]")
        host, rest = spec[1:end], spec[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
        port = int(port_text)
    else:
        host, port = spec, 53
    if not host or not 0 < port < 65536:
        raise ValueError(f"invalid nameserver address {spec!r}")
    return host, port
