"""What the media repository raises; the client API maps each to its Matrix error."""

from __future__ import annotations


class MediaError(Exception):
    """Base of the media repository's errors."""


class MediaTooLarge(MediaError):
    """More bytes than allowed (413 M_TOO_LARGE on upload, 502 M_TOO_LARGE remotely)."""


class UploadIncomplete(MediaError):
    """The body ended before (or ran past) its declared length, or the peer went away."""


class MediaNotFound(MediaError):
    """No such media (or an asynchronous upload that expired)."""


class MediaExists(MediaError):
    """The (origin, media_id) is taken: an asynchronous upload already has its bytes."""


class NotCreator(MediaError):
    """An asynchronous upload's bytes sent by someone other than its creator."""


class TooManyPending(MediaError):
    """Too many asynchronous uploads waiting for their bytes (429)."""


class CannotThumbnail(MediaError):
    """The media is not an image we can make thumbnails of."""


class ThumbnailSourceTooLarge(CannotThumbnail):
    """The image has more pixels than ``media.max_thumbnail_source_pixels`` (the spec's
    413 M_TOO_LARGE: too large for the server to thumbnail)."""


class RemoteMediaUnavailable(MediaError):
    """A remote server could not be reached or gave an unusable answer (502)."""


class RemoteMediaTimeout(RemoteMediaUnavailable):
    """The fetch did not end within ``media.remote_fetch.timeout`` (504, the download
    endpoints' answer for media not available in time)."""
