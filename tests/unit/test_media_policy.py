"""The pure rules of the media repository: media IDs, file name sanitising, the
Content-Disposition choice (inline allowlist, RFC 6266/5987 names), content types, which
configured thumbnail size answers a request, the scale/crop geometry, and durations."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from homeserver.config import MediaConfig, ThumbnailSizeConfig
from homeserver.config_typed import ConfigError
from homeserver.media.errors import ThumbnailSourceTooLarge
from homeserver.media.policy import (
    clean_content_type,
    content_disposition,
    is_inline,
    sanitise_filename,
    served_content_type,
    valid_media_id,
)
from homeserver.media.thumbnails import choose_size, crop_geometry, render, scaled_dimensions
from homeserver.util.durations import parse_duration

SIZES = MediaConfig().thumbnail_sizes


def test_media_ids() -> None:
    assert valid_media_id("AbC_-09") and valid_media_id("x" * 255)
    for bad in ("", "a/b", "a b", "é", "a.b", "x" * 256, "..", "a%2F"):
        assert not valid_media_id(bad), bad


@pytest.mark.parametrize(("given", "expected"), [
    ("photo.png", "photo.png"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\x.txt", "x.txt"),
    ("a\x00b\r\nc\u202e.txt", "abc.txt"),
    ("..", None), ("", None), (None, None), ("/", None), ("  ", None),
    ("é" * 200, "é" * 127),  # at most 255 UTF-8 bytes, never a broken character
])
def test_sanitise_filename(given: str | None, expected: str | None) -> None:
    assert sanitise_filename(given) == expected


def test_disposition() -> None:
    assert content_disposition("image/png", "a.png") == 'inline; filename="a.png"'
    assert content_disposition("IMAGE/JPEG; x=y", None) == "inline"
    assert content_disposition("video/mp4", "v.mp4").startswith("inline")
    for kind in ("image/svg+xml", "text/html", "application/javascript", "application/pdf", "text/xml",
                 "application/octet-stream", "image/svg"):
        assert content_disposition(kind, None) == "attachment" and not is_inline(kind)
    assert content_disposition("a/b", 'quote".txt') == 'attachment; filename="quote\\".txt"'
    assert content_disposition("a/b", "back\\slash") == 'attachment; filename="slash"'  # a path separator
    assert content_disposition("a/b", "naïve café.txt") == "attachment; filename*=utf-8''na%C3%AFve%20caf%C3%A9.txt"


def test_content_types() -> None:
    assert clean_content_type("image/png") == "image/png"
    assert clean_content_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    for bad in (None, "", "png", "a/b\r\nX-Evil: 1", "a/b c", "x/" + "y" * 300):
        assert clean_content_type(bad) == "application/octet-stream", bad
    assert served_content_type("text/plain") == "text/plain; charset=utf-8"
    assert served_content_type("text/plain; charset=latin1") == "text/plain; charset=latin1"
    assert served_content_type("image/png") == "image/png"


def _size(w: int, h: int, m: str) -> ThumbnailSizeConfig:
    return ThumbnailSizeConfig(w, h, m)


def test_choose_size() -> None:
    assert choose_size(SIZES, 96, 96, "crop") == _size(96, 96, "crop")
    assert choose_size(SIZES, 50, 40, "crop") == _size(96, 96, "crop")
    assert choose_size(SIZES, 10, 10, "crop") == _size(32, 32, "crop")
    assert choose_size(SIZES, 500, 500, "crop") == _size(96, 96, "crop")  # largest crop
    assert choose_size(SIZES, 300, 200, "scale") == _size(320, 240, "scale")
    assert choose_size(SIZES, 641, 100, "scale") == _size(800, 600, "scale")
    assert choose_size(SIZES, 4000, 4000, "scale") == _size(800, 600, "scale")
    only_scale = [_size(320, 240, "scale")]
    assert choose_size(only_scale, 32, 32, "crop") == _size(320, 240, "scale")
    assert choose_size([], 32, 32, "crop") is None


def test_geometry() -> None:
    assert scaled_dimensions(1000, 500, 320, 240) == (320, 160)
    assert scaled_dimensions(500, 1000, 320, 240) == (120, 240)
    assert scaled_dimensions(100, 50, 320, 240) == (100, 50)  # never enlarged
    assert scaled_dimensions(10000, 1, 32, 32) == (32, 1)
    assert crop_geometry(400, 300, 96, 96) == ((50, 0, 350, 300), (96, 96))
    assert crop_geometry(300, 400, 96, 96) == ((0, 50, 300, 350), (96, 96))
    assert crop_geometry(40, 20, 96, 96) == ((10, 0, 30, 20), (20, 20))


def test_durations_and_config() -> None:
    assert parse_duration("30d") == 30 * 86400 and parse_duration("12h") == 43200
    assert parse_duration("5m") == 300 and parse_duration("1.5s") == 1.5
    for bad in ("30", "d", "-1d", "1y", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="remote_retention"):
        MediaConfig(remote_retention="forever")
    with pytest.raises(ConfigError, match="method"):
        MediaConfig(thumbnail_sizes=[_size(1, 1, "stretch")])
    with pytest.raises(ConfigError, match="max_upload_size"):
        MediaConfig(max_upload_size=0)


def test_render_refuses_images_over_the_pixel_limit(tmp_path: Path) -> None:
    """Too many pixels is its own error (413 M_TOO_LARGE); unreadable bytes are None (400)."""
    source = tmp_path / "img.png"
    Image.new("RGB", (64, 48)).save(source, format="PNG")
    with pytest.raises(ThumbnailSourceTooLarge):
        render(str(source), "image/png", 32, 32, "scale", False, 64 * 48 - 1)
    made = render(str(source), "image/png", 32, 32, "scale", False, 64 * 48)
    assert made is not None and made.content_type == "image/png"
    source.write_bytes(b"not a png")
    assert render(str(source), "image/png", 32, 32, "scale", False, 10**6) is None
