"""Thumbnails: which configured size answers a request (pure), and making one with Pillow
(CPU-bound: the repository runs ``render`` in a worker thread).

A request for width x height with a method gets the smallest configured size of that
method at least as large in both dimensions, or the largest of that method when none is
(sizes of the other method only when none of the asked method is configured). ``scale``
fits the image inside the box, aspect kept; ``crop`` fills the box exactly, cutting the
middle; neither ever enlarges the image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageSequence

from homeserver.config import ThumbnailSizeConfig
from homeserver.media.errors import ThumbnailSourceTooLarge
from homeserver.media.policy import base_type

# Source types Pillow reads for us (never SVG: a vector format with script in it).
THUMBNAILABLE = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/apng"})
ANIMATABLE = frozenset({"image/gif", "image/webp", "image/png", "image/apng"})
MAX_ANIMATED_FRAMES = 200
# The decoders Pillow may use: the declared type is the uploader's word, and Pillow guesses
# the format from the bytes, so without this list an "image/png" could reach its TIFF, PSD,
# FITS or EPS decoders (EPS runs Ghostscript where it is installed).
PILLOW_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")


@dataclass(frozen=True, slots=True)
class Rendered:
    data: bytes
    content_type: str
    animated: bool


def choose_size(
    sizes: Sequence[ThumbnailSizeConfig], width: int, height: int, method: str
) -> ThumbnailSizeConfig | None:
    """The configured size that answers a request (None when no sizes are configured)."""
    candidates = [s for s in sizes if s.method == method] or list(sizes)
    if not candidates:
        return None
    fitting = [s for s in candidates if s.width >= width and s.height >= height]
    if fitting:
        return min(fitting, key=lambda s: (s.width * s.height, s.width))
    return max(candidates, key=lambda s: (s.width * s.height, s.width))


def scaled_dimensions(src_w: int, src_h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """``scale``: the largest size with the source's aspect that fits the box, never larger
    than the source (each side at least 1)."""
    ratio = min(box_w / src_w, box_h / src_h, 1.0)
    return max(1, round(src_w * ratio)), max(1, round(src_h * ratio))


def crop_geometry(src_w: int, src_h: int, box_w: int, box_h: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """``crop``: the centred part of the source with the box's aspect (left, top, right,
    bottom) and the size to resize it to (the box, or less if the source is smaller)."""
    target_aspect = box_w / box_h
    if src_w / src_h > target_aspect:  # too wide: cut the sides
        crop_w, crop_h = max(1, round(src_h * target_aspect)), src_h
    else:  # too tall: cut top and bottom
        crop_w, crop_h = src_w, max(1, round(src_w / target_aspect))
    left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    out_w, out_h = min(box_w, crop_w), min(box_h, crop_h)
    return (left, top, left + crop_w, top + crop_h), (out_w, out_h)


def can_thumbnail(content_type: str) -> bool:
    return base_type(content_type) in THUMBNAILABLE


def render(
    source: str, content_type: str, width: int, height: int, method: str, animated: bool, max_pixels: int
) -> Rendered | None:
    """A thumbnail of the image file ``source``; None if it cannot be read,
    ``ThumbnailSourceTooLarge`` if it has more than ``max_pixels`` pixels. An animated
    thumbnail (WebP) only when ``animated`` and the source has several frames (as many as
    fit ``max_pixels`` in all, at most ``MAX_ANIMATED_FRAMES``); otherwise the first frame,
    as JPEG for JPEG sources and PNG for the others."""
    try:
        with Image.open(source, formats=PILLOW_FORMATS) as img:
            if img.width * img.height > max_pixels:
                raise ThumbnailSourceTooLarge(f"{img.width}x{img.height}")
            if img.width < 1 or img.height < 1:
                return None
            # Every frame is decoded and resized: the frames animated are bounded by
            # ``max_pixels`` in all (a 13 KB GIF of 200 frames of 3000x3000 took 25 s of CPU).
            # (``is_animated``, not ``n_frames``, which walks the whole file.)
            frames = min(MAX_ANIMATED_FRAMES, max_pixels // (img.width * img.height))
            if animated and getattr(img, "is_animated", False) and frames > 1 and base_type(content_type) in ANIMATABLE:
                out = [
                    _resize(frame.convert("RGBA"), width, height, method)
                    for _, frame in zip(range(frames), ImageSequence.Iterator(img), strict=False)
                ]
                buf = io.BytesIO()
                durations = img.info.get("duration", 100)
                out[0].save(buf, format="WEBP", save_all=True, append_images=out[1:], duration=durations,
                            loop=0, quality=80)
                return Rendered(buf.getvalue(), "image/webp", True)
            img.seek(0)
            jpeg = base_type(content_type) == "image/jpeg"
            frame = img.convert("RGB" if jpeg else "RGBA")
            thumb = _resize(frame, width, height, method)
            buf = io.BytesIO()
            if jpeg:
                thumb.save(buf, format="JPEG", quality=80)
                return Rendered(buf.getvalue(), "image/jpeg", False)
            thumb.save(buf, format="PNG", optimize=False)
            return Rendered(buf.getvalue(), "image/png", False)
    except Image.DecompressionBombError:  # Pillow's own pixel limit, met when opening
        raise ThumbnailSourceTooLarge("too many pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        return None


def _resize(img: Image.Image, width: int, height: int, method: str) -> Image.Image:
    if method == "crop":
        box, size = crop_geometry(img.width, img.height, width, height)
        return img.crop(box).resize(size, Image.Resampling.LANCZOS)
    return img.resize(scaled_dimensions(img.width, img.height, width, height), Image.Resampling.LANCZOS)
