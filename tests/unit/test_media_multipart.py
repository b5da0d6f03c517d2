"""The multipart/mixed framing of federation media: what we send parses back, and hostile
answers (no boundary, huge headers, no closing delimiter, oversize media) are refused
within their bounds, however the bytes are chunked."""

from __future__ import annotations

import json

import pytest

from homeserver.media.multipart import (
    Chunk,
    End,
    MediaHeaders,
    Metadata,
    MultipartError,
    MultipartParser,
    Redirect,
    TooLarge,
    boundary_of,
    content_type_header,
    encode_head,
    encode_redirect,
    encode_tail,
    new_boundary,
)

B = "6a2f41a3c4ab9e1fc7c8d6d1b2a0f3e5"


def parse(body: bytes, *, chunk: int = 0, max_media: int = 1 << 20, **kw: int) -> list[object]:
    parser = MultipartParser(B, max_media_bytes=max_media, **kw)
    events: list[object] = []
    step = chunk or len(body) or 1
    for i in range(0, len(body), step):
        events += parser.feed(body[i : i + step])
    parser.close()
    return events


def media_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Chunk))


def body(media: bytes, content_type: str = "image/png", disposition: str | None = "inline") -> bytes:
    return encode_head(B, content_type, disposition) + media + encode_tail(B)


# ---------------------------------------------------------------- Content-Type


@pytest.mark.parametrize("value, expected", [
    (f"multipart/mixed; boundary={B}", B),
    (f'Multipart/Mixed;Boundary="{B}"', B),
    ('multipart/mixed; charset=x; boundary="a b:c"', "a b:c"),
    (content_type_header("xyz"), "xyz"),
])
def test_boundary_of(value: str, expected: str) -> None:
    assert boundary_of(value) == expected


@pytest.mark.parametrize("value", [
    None, "", "application/json", "multipart/mixed", "multipart/mixed; charset=utf-8",
    "multipart/form-data; boundary=x", 'multipart/mixed; boundary="unterminated',
    "multipart/mixed; boundary=" + "x" * 71, "multipart/mixed; boundary=a\x00b",
    "multipart/mixed; boundary=" + "x" * 2000,
])
def test_boundary_of_refuses(value: str | None) -> None:
    with pytest.raises(MultipartError):
        boundary_of(value)


def test_new_boundaries_are_valid_and_differ() -> None:
    a, b = new_boundary(), new_boundary()
    assert a != b and boundary_of(content_type_header(a)) == a


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("chunk", [0, 1, 2, 7, 64, 4096])
def test_round_trip_any_chunking(chunk: int) -> None:
    media = bytes(range(256)) * 50 + b"\r\n--" + B[:10].encode() + b"\r\n"  # delimiter-like bytes inside
    events = parse(body(media, disposition='attachment; filename="a.png"'), chunk=chunk)
    assert events[0] == Metadata({})
    assert events[1] == MediaHeaders("image/png", 'attachment; filename="a.png"')
    assert isinstance(events[-1], End)
    assert media_of(events) == media


def test_empty_media_and_metadata() -> None:
    events = parse(encode_head(B, "text/plain", None, {"k": 1}) + encode_tail(B))
    assert events == [Metadata({"k": 1}), MediaHeaders("text/plain", None), End()]


def test_redirect() -> None:
    events = parse(encode_redirect(B, "https://cdn.example/x?sig=1"), chunk=3)
    assert events == [Metadata({}), Redirect("https://cdn.example/x?sig=1"), End()]


def test_preamble_epilogue_lf_only_and_padding() -> None:
    raw = (
        b"this is a preamble\r\n--" + B.encode() + b"  \n"
        + b"Content-Type: application/json\n\n{}\n"  # LF line ends in headers: tolerated
        + b"\r\n--" + B.encode() + b"\r\ncontent-type: image/gif\r\n  ; x=1\r\n\r\nGIF"
        + b"\r\n--" + B.encode() + b"--\r\nepilogue, ignored" + b"x" * 100000
    )
    events = parse(raw, chunk=5)
    assert events[1] == MediaHeaders("image/gif ; x=1", None)
    assert media_of(events) == b"GIF"


def test_synapse_style_body() -> None:
    """Synapse opens with a CRLF before the first delimiter and sends no metadata headers
    beyond Content-Type."""
    raw = (
        b"\r\n--" + B.encode() + b"\r\nContent-Type: application/json\r\n\r\n{}\r\n--" + B.encode()
        + b"\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename=a.png\r\n\r\nPNGDATA"
        + b"\r\n--" + B.encode() + b"--\r\n"
    )
    assert media_of(parse(raw)) == b"PNGDATA"


# ---------------------------------------------------------------- hostile answers


def test_no_terminating_boundary() -> None:
    raw = encode_head(B, "image/png", None) + b"x" * 1000
    with pytest.raises(MultipartError, match="closing delimiter"):
        parse(raw)


def test_oversize_media_stops_at_the_bound() -> None:
    parser = MultipartParser(B, max_media_bytes=1000)
    got = 0
    with pytest.raises(TooLarge):
        for ev in parser.feed(encode_head(B, "image/png", None)):
            assert not isinstance(ev, Chunk)
        for _ in range(100):
            for ev in parser.feed(b"y" * 100):
                if isinstance(ev, Chunk):
                    got += len(ev.data)
    assert got <= 1000


def test_oversize_media_in_one_chunk() -> None:
    with pytest.raises(TooLarge):
        parse(body(b"z" * 1001), max_media=1000)
    assert media_of(parse(body(b"z" * 1000), max_media=1000)) == b"z" * 1000


def test_huge_headers_are_refused_early() -> None:
    parser = MultipartParser(B, max_media_bytes=100, max_header_bytes=1024)
    parser.feed(b"--" + B.encode() + b"\r\n")
    with pytest.raises(MultipartError, match="headers are too large"):
        for _ in range(100):
            parser.feed(b"X-Junk: " + b"a" * 100)


def test_no_boundary_at_all_is_refused_early() -> None:
    parser = MultipartParser(B, max_media_bytes=100, max_header_bytes=1024)
    with pytest.raises(MultipartError, match="no boundary"):
        for _ in range(100):
            parser.feed(b"<html>" * 10)


def test_wrong_boundary() -> None:
    raw = encode_head("other", "image/png", None) + b"x" + encode_tail("other")
    with pytest.raises(MultipartError):
        parse(raw, max_header_bytes=64)


def test_huge_json_part() -> None:
    raw = encode_head(B, "image/png", None, {"pad": "p" * 100_000}) + encode_tail(B)
    with pytest.raises(MultipartError, match="metadata part is too large"):
        parse(raw, chunk=1000)


@pytest.mark.parametrize("meta", [b"[]", b"not json", b"\xff\xfe", b'"x"'])
def test_metadata_not_an_object(meta: bytes) -> None:
    raw = b"--" + B.encode() + b"\r\nContent-Type: application/json\r\n\r\n" + meta + encode_tail(B)
    with pytest.raises(MultipartError, match="metadata"):
        parse(raw)


def test_one_part_only() -> None:
    raw = b"--" + B.encode() + b"\r\nContent-Type: application/json\r\n\r\n{}" + encode_tail(B)
    with pytest.raises(MultipartError, match="1 part"):
        parse(raw)


def test_three_parts() -> None:
    raw = body(b"a")[: -len(encode_tail(B))] + b"\r\n--" + B.encode() + b"\r\nX: y\r\n\r\nb" + encode_tail(B)
    with pytest.raises(MultipartError, match="more than 2"):
        parse(raw)


def test_garbage_after_delimiter() -> None:
    raw = b"--" + B.encode() + b"garbage\r\nContent-Type: application/json\r\n\r\n{}" + encode_tail(B)
    with pytest.raises(MultipartError, match="garbage"):
        parse(raw)


def test_malformed_header_line() -> None:
    raw = b"--" + B.encode() + b"\r\nno colon here\r\n\r\n{}" + encode_tail(B)
    with pytest.raises(MultipartError, match="malformed"):
        parse(raw)


def test_location_part_with_a_body() -> None:
    raw = encode_redirect(B, "https://x/")[: -len(encode_tail(B))] + b"q" * 20_000 + encode_tail(B)
    with pytest.raises(MultipartError, match="Location part"):
        parse(raw)


def test_encoder_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        encode_head(B, "image/png\r\nLocation: https://evil/", None)
    with pytest.raises(ValueError):
        encode_redirect(B, "https://x/\r\nX: y")


def test_encoded_head_is_what_the_spec_shows() -> None:
    head = encode_head(B, "image/png", "inline; filename=a.png")
    first, second = head.split(b"--" + B.encode() + b"\r\n")[1:]
    assert first == b"Content-Type: application/json\r\n\r\n" + json.dumps({}).encode() + b"\r\n"
    assert second == b"Content-Type: image/png\r\nContent-Disposition: inline; filename=a.png\r\n\r\n"
