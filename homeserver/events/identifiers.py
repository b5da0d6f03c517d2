"""Validators for Matrix identifiers (spec appendices, "Identifier Grammar").

Server names, user IDs (the lenient historical grammar events must accept, and the strict
grammar for IDs we allocate), room IDs and event IDs. Pure string checks, no I/O.
"""

from __future__ import annotations

import ipaddress
import re

MAX_ID_BYTES = 255

_DNS_NAME = re.compile(r"[0-9A-Za-z.-]{1,255}")
_IPV4_SHAPE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT = re.compile(r"[0-9]{1,5}")
_STRICT_LOCALPART = re.compile(r"[a-z0-9._=/+-]+")
_URLSAFE_B64_HASH = re.compile(r"[A-Za-z0-9_-]{43}")


def _split_port(server_name: str) -> tuple[str, str | None]:
    """Split ``host[:port]``; an IPv6 literal keeps its brackets."""
    if server_name.startswith("["):
        end = server_name.find("]")
        if end == -1:
            return server_name, None
        host, rest = server_name[: end + 1], server_name[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            return server_name, None  # trailing garbage: the host check fails
        return host, rest[1:]
    if ":" in server_name:
        host, _, port = server_name.rpartition(":")
        return host, port
    return server_name, None


def is_valid_hostname(host: str) -> bool:
    """IPv4 literal, bracketed IPv6 literal, or DNS name per the server name grammar."""
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        literal = host[1:-1]
        if not _IPV6_CHARS.fullmatch(literal):
            return False
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        return True
    if _IPV4_SHAPE.fullmatch(host):
        # A dotted quad is an IPv4 literal: each number must lie in 0..255.
        return all(int(part) <= 255 for part in host.split("."))
    if not _DNS_NAME.fullmatch(host):
        return False
    # Labels separated by dots, none empty (a single trailing dot is not allowed either).
    return all(label for label in host.split("."))


def is_valid_server_name(server_name: str) -> bool:
    """``hostname [":" port]`` with hostname IPv4 / "[" IPv6 "]" / DNS name, port 1..65535."""
    if not isinstance(server_name, str) or not server_name:
        return False
    host, port = _split_port(server_name)
    if port is not None:
        if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
            return False
    return is_valid_hostname(host)


def server_name_of(identifier: str) -> str:
    """The domain part of ``@user:domain`` (or any ``&local:domain`` ID); "" if none."""
    _, sep, domain = identifier.partition(":")
    return domain if sep else ""


def is_valid_user_id(user_id: object, *, strict: bool = False) -> bool:
    """Whether ``user_id`` is ``@localpart:server_name`` of at most 255 bytes.

    By default the localpart follows the historical grammar servers MUST accept in events
    (any code points except ``:`` and NUL, possibly empty). ``strict=True`` applies the
    current grammar (``[a-z0-9._=/+-]+``) for IDs this server allocates.
    """
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    if len(user_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return False
    localpart, sep, domain = user_id[1:].partition(":")
    if not sep:
        return False
    if "\x00" in localpart or any(0xD800 <= ord(c) <= 0xDFFF for c in localpart):
        return False
    if strict and not _STRICT_LOCALPART.fullmatch(localpart):
        return False
    return is_valid_server_name(domain)


def is_valid_event_id(event_id: object) -> bool:
    """``$`` followed by something, at most 255 bytes (the opaque part is version-specific)."""
    return (
        isinstance(event_id, str)
        and len(event_id) > 1
        and event_id.startswith("$")
        and len(event_id.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES
    )


def is_valid_room_id(room_id: object, *, hash_format: bool) -> bool:
    """A room ID: ``!`` + 43 URL-safe base64 characters when ``hash_format`` (room v12),
    else ``!opaque:server_name``; at most 255 bytes either way."""
    if not isinstance(room_id, str) or not room_id.startswith("!"):
        return False
    if len(room_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return False
    if hash_format:
        return _URLSAFE_B64_HASH.fullmatch(room_id[1:]) is not None
    opaque, sep, domain = room_id[1:].partition(":")
    return bool(sep) and "\x00" not in opaque and is_valid_server_name(domain)
