"""Which request bodies get more time than body_timeout, and how much (slow_bodies.py)."""

from __future__ import annotations

from homeserver.slow_bodies import upload_allowance

MIB = 1024 * 1024


def test_only_media_uploads_with_a_length_get_an_allowance() -> None:
    allow = upload_allowance(60.0, 64 * 1024, 50 * MIB)
    got = allow("POST", "/_matrix/media/v3/upload", 50 * MIB)
    assert got is not None and got.grace == 60.0 and got.deadline == 60.0 + 800.0
    assert allow("POST", "/_matrix/media/r0/upload", MIB) is not None
    assert allow("PUT", "/_matrix/media/v3/upload/example.org/abc", MIB) is not None
    assert allow("POST", "/_matrix/media/v3/upload", None) is None  # chunked
    assert allow("POST", "/_matrix/client/v3/login", MIB) is None
    assert allow("GET", "/_matrix/media/v3/upload", MIB) is None
    assert allow("POST", "/_matrix/media/v3/upload/x/y/z", MIB) is None
    assert allow("POST", "/_matrix/media/v3/upload", 0) is None  # nothing to wait for
    # The size counts up to the largest upload: a huge declared length gains nothing more.
    assert allow("POST", "/_matrix/media/v3/upload", 10**12).deadline == 860.0  # type: ignore[union-attr]
    assert upload_allowance(60.0, 0, 50 * MIB)("POST", "/_matrix/media/v3/upload", MIB) is None


def test_the_body_must_keep_up_after_the_grace() -> None:
    got = upload_allowance(10.0, 1000, 50 * MIB)("POST", "/_matrix/media/v3/upload", 100_000)
    assert got is not None and got.deadline == 110.0 and got.check_every == 5.0
    assert got.keeps_up(9.9, 0)  # the grace
    assert not got.keeps_up(12.0, 1000)  # behind: 2 s at 1000 B/s after the grace
    assert got.keeps_up(12.0, 2000)
    assert not got.keeps_up(110.0, 99_999)  # the deadline, whatever the progress
