"""The ``multipart/mixed`` bodies of federation media (server-server API, "Content
Repository"): exactly two parts, a JSON object of metadata (``{}`` today), then the media
itself (with its ``Content-Type`` and ``Content-Disposition``) or a ``Location`` header
naming where to get it.

Pure: bytes in, events out, no I/O. ``encode_head``/``encode_tail`` frame a file we stream
between them; ``MultipartParser`` takes a remote server's answer in chunks as they come
and holds at most one part's headers (``max_header_bytes``), the JSON part
(``max_json_bytes``) and a delimiter's length of media at a time. The media's total is
bounded by ``max_media_bytes``; past it ``TooLarge`` is raised, so a caller never stores
more than it allowed. Anything that is not two well-formed parts (no boundary, a part
without headers, no closing delimiter) raises ``MultipartError``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

CRLF = b"\r\n"
# RFC 2046 section 5.1.1: 1 to 70 characters of this set, not ending with a space.
_BCHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
DEFAULT_MAX_HEADER_BYTES = 8 * 1024
DEFAULT_MAX_JSON_BYTES = 64 * 1024
# Transport padding (whitespace after a delimiter, before its CRLF) we skip at most.
_MAX_PADDING = 64


class MultipartError(ValueError):
    """The body is not the two-part ``multipart/mixed`` answer the spec describes."""


class TooLarge(MultipartError):
    """The media part is larger than the caller allows."""


@dataclass(frozen=True, slots=True)
class Metadata:
    """The first part: the media's metadata (a JSON object)."""

    value: dict[str, object]


@dataclass(frozen=True, slots=True)
class MediaHeaders:
    """The second part carries the media: its headers (the bytes follow as ``Chunk``s)."""

    content_type: str | None
    content_disposition: str | None


@dataclass(frozen=True, slots=True)
class Redirect:
    """The second part names where the media is instead (its ``Location``)."""

    location: str


@dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The closing delimiter was seen: the answer is complete."""


Event = Metadata | MediaHeaders | Redirect | Chunk | End


# ---------------------------------------------------------------- Content-Type


def boundary_of(content_type: str | None) -> str:
    """The boundary of a ``multipart/mixed`` Content-Type; MultipartError when it is not
    one or names no valid boundary."""
    if not content_type:
        raise MultipartError("no Content-Type")
    if len(content_type) > 1024:
        raise MultipartError("Content-Type is too long")
    mime, _, params = content_type.partition(";")
    if mime.strip().lower() != "multipart/mixed":
        raise MultipartError(f"Content-Type is {mime.strip()[:64]!r}, not multipart/mixed")
    boundary = _param(params, "boundary")
    if boundary is None:
        raise MultipartError("Content-Type names no boundary")
    if not _BCHARS.match(boundary):
        raise MultipartError("the boundary is not a valid RFC 2046 boundary")
    return boundary


def _param(params: str, wanted: str) -> str | None:
    """A parameter of a header value (token or quoted string), case-insensitive name."""
    rest = params
    while rest:
        rest = rest.lstrip(" \t;")
        name, eq, rest = rest.partition("=")
        if not eq:
            return None
        rest = rest.lstrip(" \t")
        if rest.startswith('"'):
            value, i, escaped = [], 1, False
            while i < len(rest):
                c = rest[i]
                if escaped:
                    value.append(c)
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    break
                else:
                    value.append(c)
                i += 1
            else:
                return None  # unterminated quoted string
            text, rest = "".join(value), rest[i + 1 :]
        else:
            text, _, rest = rest.partition(";")
            text = text.strip()
        if name.strip().lower() == wanted:
            return text
    return None


# ---------------------------------------------------------------- encoding


def new_boundary() -> str:
    return secrets.token_hex(16)


def content_type_header(boundary: str) -> str:
    return f"multipart/mixed; boundary={boundary}"


def encode_head(boundary: str, content_type: str, content_disposition: str | None,
                metadata: dict[str, object] | None = None) -> bytes:
    """Everything before the media's bytes: the JSON part, then the second part's
    headers. Header values must not contain line breaks (they are refused)."""
    meta = json.dumps(metadata or {}, separators=(",", ":")).encode()
    headers = [f"Content-Type: {content_type}"]
    if content_disposition:
        headers.append(f"Content-Disposition: {content_disposition}")
    for h in headers:
        if "\r" in h or "\n" in h:
            raise ValueError("a header value contains a line break")
    b = boundary.encode()
    return (
        b"--" + b + CRLF + b"Content-Type: application/json" + CRLF + CRLF + meta + CRLF
        + b"--" + b + CRLF + CRLF.join(h.encode("utf-8") for h in headers) + CRLF + CRLF
    )


def encode_tail(boundary: str) -> bytes:
    return CRLF + b"--" + boundary.encode() + b"--" + CRLF


def encode_redirect(boundary: str, location: str, metadata: dict[str, object] | None = None) -> bytes:
    """A whole body whose second part is a ``Location`` (tests play remotes with it)."""
    if "\r" in location or "\n" in location:
        raise ValueError("the location contains a line break")
    meta = json.dumps(metadata or {}, separators=(",", ":")).encode()
    b = boundary.encode()
    return (
        b"--" + b + CRLF + b"Content-Type: application/json" + CRLF + CRLF + meta + CRLF
        + b"--" + b + CRLF + b"Location: " + location.encode() + CRLF + CRLF
        + CRLF + b"--" + b + b"--" + CRLF
    )


# ---------------------------------------------------------------- parsing

_PREAMBLE, _HEADERS, _BODY, _AFTER_DELIMITER, _EPILOGUE = range(5)


class MultipartParser:
    """Push parser of the two-part answer: ``feed`` chunks as they arrive, get events
    (``Metadata``, then ``MediaHeaders`` and ``Chunk``s, or ``Redirect``; then ``End``);
    ``close`` at the end of the stream raises unless ``End`` was seen."""

    def __init__(
        self,
        boundary: str,
        *,
        max_media_bytes: int,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    ) -> None:
        self._dash_boundary = b"--" + boundary.encode("ascii")
        self._delimiter = CRLF + self._dash_boundary
        self._max_media = max_media_bytes
        self._max_header = max_header_bytes
        self._max_json = max_json_bytes
        self._buf = bytearray()
        self._state = _PREAMBLE
        self._part = 0  # parts whose headers have been read
        self._json = bytearray()
        self._media_bytes = 0
        self._redirect = False
        self._preamble_seen = 0

    @property
    def done(self) -> bool:
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> list[Event]:
        if self._state == _EPILOGUE:
            return []  # the epilogue is ignored (and not kept)
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self._state != _EPILOGUE:
            raise MultipartError("the body ended before its closing delimiter")

    # One state transition, or False when more input is needed.
    def _step(self, events: list[Event]) -> bool:
        if self._state == _PREAMBLE:
            return self._preamble()
        if self._state == _HEADERS:
            return self._headers(events)
        if self._state == _BODY:
            return self._body(events)
        if self._state == _AFTER_DELIMITER:
            return self._after_delimiter(events)
        self._buf.clear()
        return False

    def _preamble(self) -> bool:
        # The first delimiter may open the body (no CRLF before it) or follow a preamble.
        if self._buf.startswith(self._dash_boundary):
            del self._buf[: len(self._dash_boundary)]
            self._state = _AFTER_DELIMITER
            return True
        i = self._buf.find(self._delimiter)
        if i >= 0:
            del self._buf[: i + len(self._delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        keep = len(self._delimiter) - 1
        if len(self._buf) > keep:
            self._preamble_seen += len(self._buf) - keep
            del self._buf[: len(self._buf) - keep]
        if self._preamble_seen > self._max_header:
            raise MultipartError("no boundary where the body should begin")
        return False

    def _after_delimiter(self, events: list[Event]) -> bool:
        # "--" closes the body; otherwise optional padding, then CRLF and a part's headers.
        if len(self._buf) < 2:
            return False
        if self._buf.startswith(b"--"):
            if self._part != 2:
                raise MultipartError(f"the body has {self._part} part(s), not 2")
            self._state = _EPILOGUE
            self._buf.clear()
            events.append(End())
            return False
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > _MAX_PADDING:
                raise MultipartError("garbage after a delimiter")
            return False
        if self._buf[:end].rstrip(b"\r").strip(b" \t"):
            raise MultipartError("garbage after a delimiter")
        del self._buf[: end + 1]
        if self._part == 2:
            raise MultipartError("the body has more than 2 parts")
        self._state = _HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        end, sep = self._buf.find(b"\r\n\r\n"), 4
        lf = self._buf.find(b"\n\n")
        if lf >= 0 and (end < 0 or lf < end):
            end, sep = lf, 2
        if self._buf.startswith(CRLF):  # a part with no headers at all
            end, sep = 0, 2
        if end < 0:
            if len(self._buf) > self._max_header:
                raise MultipartError("a part's headers are too large")
            return False
        if end > self._max_header:
            raise MultipartError("a part's headers are too large")
        headers = _parse_headers(bytes(self._buf[:end]))
        del self._buf[: end + sep]
        self._part += 1
        if self._part == 2:
            location = headers.get("location")
            if location is not None:
                self._redirect = True
                events.append(Redirect(location))
            else:
                events.append(MediaHeaders(headers.get("content-type"), headers.get("content-disposition")))
        self._state = _BODY
        return True

    def _body(self, events: list[Event]) -> bool:
        i = self._buf.find(self._delimiter)
        if i >= 0:
            self._take(bytes(self._buf[:i]), events)
            del self._buf[: i + len(self._delimiter)]
            if self._part == 1:
                self._finish_json(events)
            self._state = _AFTER_DELIMITER
            return True
        keep = len(self._delimiter) - 1  # the start of a delimiter split between chunks
        if len(self._buf) > keep:
            self._take(bytes(self._buf[: len(self._buf) - keep]), events)
            del self._buf[: len(self._buf) - keep]
        return False

    def _take(self, data: bytes, events: list[Event]) -> None:
        if not data:
            return
        if self._part == 1:
            if len(self._json) + len(data) > self._max_json:
                raise MultipartError("the metadata part is too large")
            self._json += data
        elif self._redirect:
            # A Location part has no body to speak of; a little is tolerated, not kept.
            self._media_bytes += len(data)
            if self._media_bytes > self._max_header:
                raise MultipartError("a Location part carries a body")
        else:
            self._media_bytes += len(data)
            if self._media_bytes > self._max_media:
                raise TooLarge(f"the media is larger than {self._max_media} bytes")
            events.append(Chunk(data))

    def _finish_json(self, events: list[Event]) -> None:
        try:
            value = json.loads(bytes(self._json).decode("utf-8")) if self._json.strip() else {}
        except (UnicodeDecodeError, ValueError):
            raise MultipartError("the metadata part is not JSON") from None
        if not isinstance(value, dict):
            raise MultipartError("the metadata part is not a JSON object")
        self._json.clear()
        events.append(Metadata(value))


def _parse_headers(raw: bytes) -> dict[str, str]:
    """A part's headers, names lower-cased (the last of a repeated name wins); folded
    continuation lines are joined. MultipartError on a line that is not a header."""
    out: dict[str, str] = {}
    last: str | None = None
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            continue
        text = line.decode("utf-8", "replace")
        if text[0] in " \t" and last is not None:
            out[last] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise MultipartError("a part's header line is malformed")
        last = name.lower()
        out[last] = value.strip()
    return out
