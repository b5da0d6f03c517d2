"""The X-Matrix Authorization scheme (server-server-api.md, "Request Authentication").

Outbound: sign (method, uri, origin, destination, content) with our key and build the
header. Inbound: parse the header strictly enough to reject garbage and leniently enough
for the real servers (RFC 9110 auth-params, quoted or token values, colons unquoted).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from signedjson.sign import sign_json

from homeserver.crypto.keys import ServerSigningKey
from homeserver.events.canonical import canonical_json, canonical_json_float_free, decode_b64


class XMatrixError(Exception):
    """The request's X-Matrix authorization is missing, malformed or does not verify."""


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    origin: str
    destination: str | None
    key_id: str
    signature: str


def request_json(
    method: str, uri: str, origin: str, destination: str, content: Any | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "method": method.upper(),
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        body["content"] = content
    return body


def authorization_header(
    key: ServerSigningKey,
    origin: str,
    destination: str,
    method: str,
    uri: str,
    content: Any | None = None,
) -> str:
    """The ``Authorization`` header value for a request from ``origin`` to ``destination``."""
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key.signing_key)
    sig = signed["signatures"][origin][key.key_id]
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key.key_id}",sig="{sig}"'


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z:]+"  # RFC 9110 tchar, plus ':' for older servers
_PARAM = re.compile(
    r"\s*(?P<name>[!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*"
    r"(?:\"(?P<quoted>(?:[^\"\\]|\\.)*)\"|(?P<token>" + _TOKEN + r"))\s*(?:,|$)"
)


def parse_authorization(header: str) -> XMatrixAuth:
    """Parse one ``Authorization: X-Matrix ...`` header value."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "x-matrix":
        raise XMatrixError("Authorization header is not of the X-Matrix scheme")
    values: dict[str, str] = {}
    pos = 0
    params = params.strip()
    while pos < len(params):
        m = _PARAM.match(params, pos)
        if m is None or m.end() == pos:
            raise XMatrixError("malformed X-Matrix Authorization header")
        raw = m.group("quoted")
        value = re.sub(r"\\(.)", r"\1", raw) if raw is not None else m.group("token")
        values.setdefault(m.group("name").lower(), value)
        pos = m.end()
    missing = [n for n in ("origin", "key", "sig") if not values.get(n)]
    if missing:
        raise XMatrixError(f"X-Matrix Authorization header lacks {', '.join(missing)}")
    return XMatrixAuth(
        origin=values["origin"],
        destination=values.get("destination"),
        key_id=values["key"],
        signature=values["sig"],
    )


def pdu_texts(content: Any, float_free: bool = False) -> list[bytes] | None:
    """For a body with a ``pdus`` list of objects (``/send``): each PDU's canonical JSON,
    which the request's signed bytes are assembled from and the inbox can keep as is.
    ``float_free``: the body holds no float (a faster encoder is used)."""
    if not isinstance(content, dict):
        return None
    pdus = content.get("pdus")
    if not isinstance(pdus, list) or not pdus or not all(isinstance(p, dict) for p in pdus):
        return None
    encode = canonical_json_float_free if float_free else canonical_json
    return [encode(p) for p in pdus]


def signed_bytes(
    method: str, uri: str, origin: str, destination: str, content: Any | None,
    pdu_parts: list[bytes] | None = None,
) -> bytes:
    """The canonical JSON a request signature covers. With ``pdu_parts`` (the canonical
    JSON of each of ``content["pdus"]``), the PDUs are not encoded again: canonical JSON
    is compositional, so the list is spliced in where a one-off placeholder was encoded."""
    if pdu_parts is None or not isinstance(content, dict):
        return canonical_json(request_json(method, uri, origin, destination, content))
    token = f"pdus-{secrets.token_hex(16)}"
    payload = canonical_json(request_json(method, uri, origin, destination, dict(content, pdus=token)))
    return payload.replace(b'"' + token.encode() + b'"', b"[" + b",".join(pdu_parts) + b"]", 1)


def verify_request(
    auth: XMatrixAuth,
    verify_key: Any,
    method: str,
    uri: str,
    our_name: str,
    content: Any | None,
    pdu_parts: list[bytes] | None = None,
) -> None:
    """Check the request signature with the origin's nacl ``verify_key``; raise on failure."""
    payload = signed_bytes(method, uri, auth.origin, our_name, content, pdu_parts)
    try:
        sig = decode_b64(auth.signature)
        verify_key.verify(payload, sig)
    except Exception:
        raise XMatrixError(
            f"invalid signature from {auth.origin} with key {auth.key_id}"
        ) from None
