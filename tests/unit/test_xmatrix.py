"""X-Matrix header building, parsing and verification (server-server-api.md, Authentication)."""

from __future__ import annotations

import pytest

from homeserver.crypto.keys import generate_key_line, parse_key_file
from homeserver.crypto.xmatrix import (
    XMatrixError,
    authorization_header,
    parse_authorization,
    verify_request,
)


@pytest.fixture
def key():  # type: ignore[no-untyped-def]
    return parse_key_file(generate_key_line("k1"))


def test_roundtrip(key) -> None:  # type: ignore[no-untyped-def]
    header = authorization_header(key, "a.example", "b.example", "PUT", "/_matrix/x?y=1", {"z": 1})
    auth = parse_authorization(header)
    assert (auth.origin, auth.destination, auth.key_id) == ("a.example", "b.example", "ed25519:k1")
    verify_request(auth, key.signing_key.verify_key, "PUT", "/_matrix/x?y=1", "b.example", {"z": 1})


@pytest.mark.parametrize(
    ("method", "uri", "dest", "content"),
    [
        ("GET", "/_matrix/x?y=1", "b.example", {"z": 1}),  # method changed
        ("PUT", "/_matrix/x?y=2", "b.example", {"z": 1}),  # query changed
        ("PUT", "/_matrix/x?y=1", "c.example", {"z": 1}),  # replayed to another server
        ("PUT", "/_matrix/x?y=1", "b.example", {"z": 2}),  # body tampered
        ("PUT", "/_matrix/x?y=1", "b.example", None),  # body dropped
    ],
)
def test_tampering_detected(key, method: str, uri: str, dest: str, content: object) -> None:  # type: ignore[no-untyped-def]
    header = authorization_header(key, "a.example", "b.example", "PUT", "/_matrix/x?y=1", {"z": 1})
    auth = parse_authorization(header)
    with pytest.raises(XMatrixError):
        verify_request(auth, key.signing_key.verify_key, method, uri, dest, content)


def test_lenient_parsing() -> None:
    auth = parse_authorization(
        'X-Matrix  key="ed25519:a" , ORIGIN=origin.example:8448,sig="ab\\"c",'
        'destination="d.example", unknown=1'
    )
    assert auth.origin == "origin.example:8448"
    assert auth.key_id == "ed25519:a"
    assert auth.signature == 'ab"c'
    assert auth.destination == "d.example"


def test_destination_optional() -> None:
    auth = parse_authorization('X-Matrix origin="o.example",key="ed25519:a",sig="x"')
    assert auth.destination is None


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "X-Matrix",
        'X-Matrix origin="o.example",key="ed25519:a"',  # no sig
        'X-Matrix origin="o.example" key="ed25519:a",sig="x"',  # missing comma
        'X-Matrix origin="unterminated,key="ed25519:a",sig="x"',
    ],
)
def test_malformed(header: str) -> None:
    with pytest.raises(XMatrixError):
        parse_authorization(header)


def test_signed_bytes_spliced_from_pdu_parts_equal_the_whole_encoding() -> None:
    from homeserver.crypto.xmatrix import pdu_texts, signed_bytes

    content = {
        "origin": "a.example", "origin_server_ts": 5, "edus": [{"edu_type": "m.typing", "content": {"k": "é"}}],
        "pdus": [{"type": "m.room.message", "content": {"body": "ünïcode \u2028", "n": 1}, "z": [1, {"b": 2, "a": 1}]},
                 {"type": "x", "content": {}}],
    }
    parts = pdu_texts(content)
    assert parts is not None and len(parts) == 2
    whole = signed_bytes("PUT", "/_matrix/federation/v1/send/1", "a.example", "b.example", content)
    spliced = signed_bytes("PUT", "/_matrix/federation/v1/send/1", "a.example", "b.example", content, parts)
    assert spliced == whole
    assert pdu_texts({"pdus": "nope"}) is None and pdu_texts([]) is None
