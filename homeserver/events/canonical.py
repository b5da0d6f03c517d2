"""Canonical JSON (spec appendix "Canonical JSON") and the base64 flavours Matrix uses."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
from canonicaljson import encode_canonical_json

from homeserver.events.errors import EventFormatError

# Canonical JSON integers must lie in the range [-(2**53)+1, (2**53)-1].
MIN_INT = -(2**53) + 1
MAX_INT = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """The canonical JSON encoding of ``value`` (sorted keys, no spaces, UTF-8).

    Numbers with an integral value must be integers (``1e10`` -> ``10000000000``): values
    parsed with ``loads`` already are, so no pass over the value is needed here. A value
    JSON cannot hold (an infinity: ``1e400`` parses to one) raises EventFormatError.
    """
    try:
        return encode_canonical_json(value)
    except (ValueError, TypeError) as e:
        raise EventFormatError(f"not encodable as canonical JSON: {e}") from None


def canonical_json_float_free(value: Any) -> bytes:
    """``canonical_json`` for a value known to hold no float, several times faster.

    orjson writes sorted keys, no spaces, UTF-8 and the same escapes as the reference
    encoder for every code point (tested exhaustively), but formats some floats differently
    (``1e-05`` against ``0.00001``): hence the precondition, which ``loads_noting_floats``
    lets a caller establish. Anything orjson refuses (an integer beyond 64 bits, a non-string
    key, a lone surrogate, a type it does not know) goes to the reference encoder, which
    gives its own answer or error.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return canonical_json(value)


def _parse_number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: str | bytes) -> Any:
    """Parse JSON as Matrix needs it: integral numbers become ints, NaN/Infinity refused."""
    return json.loads(data, parse_float=_parse_number, parse_constant=_reject_constant)


def loads_noting_floats(data: str | bytes) -> tuple[Any, bool]:
    """``loads``, and whether the text held any number with a fraction or an exponent (if
    not, nothing parsed is a float, and ``canonical_json_float_free`` may encode it)."""
    seen = False

    def parse_float(text: str) -> int | float:
        nonlocal seen
        seen = True
        return _parse_number(text)

    return json.loads(data, parse_float=parse_float, parse_constant=_reject_constant), seen


def loads_exact(data: str | bytes) -> Any:
    """Parse JSON keeping every number as written: a float literal stays a float, even an
    integral one (``1.0``, ``1e3``). For PDUs (and the bodies carrying them): in rooms 1-5
    floats are allowed, and the origin hashed and signed them as floats (Synapse's
    canonical JSON writes ``1.0`` and ``1000.0``), so turning them into integers would
    change the content hash and the event ID. From room 6 any float is refused by the
    format check. NaN and the infinities' names are refused; ``1e400`` parses to an
    infinity, which the canonical JSON encoder refuses."""
    return json.loads(data, parse_constant=_reject_constant)


def loads_exact_noting_floats(data: str | bytes) -> tuple[Any, bool]:
    """``loads_exact``, and whether the text held any float literal (see
    ``loads_noting_floats``)."""
    seen = False

    def parse_float(text: str) -> float:
        nonlocal seen
        seen = True
        return float(text)

    return json.loads(data, parse_float=parse_float, parse_constant=_reject_constant), seen


def _integral(item: Any) -> Any:
    return int(item) if isinstance(item, float) and item.is_integer() else item


def integral_floats_to_ints(value: Any) -> Any:
    """A copy of ``value`` (parsed JSON) with every integral float made an integer, as
    ``loads`` would have parsed it. Iterative: any depth the parser took is fine."""
    if not isinstance(value, (dict, list)):
        return _integral(value)
    out: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, out)]
    while stack:
        source, target = stack.pop()
        for key, item in (source.items() if isinstance(source, dict) else enumerate(source)):
            if isinstance(item, (dict, list)):
                copied: Any = {} if isinstance(item, dict) else []
                stack.append((item, copied))
            else:
                copied = _integral(item)
            if isinstance(target, dict):
                target[key] = copied
            else:
                target.append(copied)
    return out


def check_canonical_values(value: Any, path: str = "") -> None:
    """Raise EventFormatError if ``value`` holds a float or an integer out of range."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise EventFormatError(f"integer out of range at {where or '/'}")
        elif isinstance(item, float):
            raise EventFormatError(f"float not allowed at {where or '/'}")
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise EventFormatError(f"non-string key at {where or '/'}")
                stack.append((sub, f"{where}/{key}"))
        elif isinstance(item, (list, tuple)):
            for i, sub in enumerate(item):
                stack.append((sub, f"{where}/{i}"))
        else:
            raise EventFormatError(f"value of type {type(item).__name__} at {where or '/'}")


def unpadded_b64(data: bytes) -> str:
    """Standard base64 without padding (hashes, signatures, keys)."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def urlsafe_unpadded_b64(data: bytes) -> str:
    """URL-safe base64 without padding (event IDs of room version 4 and later)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def decode_b64(text: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not."""
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)
