"""Pure rules for serving media (no I/O): valid media IDs, the file name offered in
``Content-Disposition`` (RFC 6266), which content types may be shown inline, and the
security headers every media response carries."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

# The spec's media ID grammar: [A-Za-z0-9_-]+ (we allow up to 255 characters).
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
MAX_FILENAME_BYTES = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Shown inline by browsers only when the type is one of these (images, audio and video that
# cannot run script); everything else, SVG and HTML included, is an attachment.
INLINE_CONTENT_TYPES = frozenset({
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave", "audio/wav",
    "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
        "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
}

# A header value token (RFC 7230 tchar) for the content type's type/subtype and parameters.
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+/[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*;[\x20-\x7e]*)?$")
# Characters that may stand in a quoted filename="..." as they are.
_PLAIN_FILENAME = re.compile(r"^[\x20-\x7e]+$")


def valid_media_id(media_id: str) -> bool:
    return bool(_MEDIA_ID.match(media_id))


def base_type(content_type: str) -> str:
    """``image/png; charset=x`` -> ``image/png`` (lower case)."""
    return content_type.split(";", 1)[0].strip().lower()


def clean_content_type(value: str | None) -> str:
    """The content type an upload declared, kept if it is a well-formed header value of at
    most 255 characters, else ``application/octet-stream``."""
    if not value or len(value) > 255 or not _CONTENT_TYPE.match(value.strip()):
        return DEFAULT_CONTENT_TYPE
    return value.strip()


def sanitise_filename(name: str | None) -> str | None:
    """A file name fit to store and offer: the last path component, without control or
    format characters, at most ``MAX_FILENAME_BYTES`` UTF-8 bytes; None if nothing is left."""
    if not name:
        return None
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if name in ("", ".", ".."):
        return None
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_FILENAME_BYTES:
        name = encoded[:MAX_FILENAME_BYTES].decode("utf-8", errors="ignore")
    return name or None


def is_inline(content_type: str) -> bool:
    return base_type(content_type) in INLINE_CONTENT_TYPES


def content_disposition(content_type: str, filename: str | None) -> str:
    """``inline`` for the allowlisted types, else ``attachment``, with the sanitised file
    name: ``filename="..."`` when it is plain printable ASCII, else RFC 5987's
    ``filename*=utf-8''...`` (percent-encoded)."""
    disposition = "inline" if is_inline(content_type) else "attachment"
    name = sanitise_filename(filename)
    if name is None:
        return disposition
    if _PLAIN_FILENAME.match(name):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'{disposition}; filename="{escaped}"'
    return f"{disposition}; filename*=utf-8''{quote(name, safe='')}"


def served_content_type(content_type: str) -> str:
    """The Content-Type a download is served with: the stored one (checked at upload), with
    a charset for text so that browsers do not guess one."""
    if base_type(content_type).startswith("text/") and "charset" not in content_type.lower():
        return f"{content_type}; charset=utf-8"
    return content_type
