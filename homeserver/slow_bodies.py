"""More time for the body of a media upload than the listener's ``body_timeout``.

A client listener gives every request's body ``body_timeout`` seconds (connections.py:
slowloris protection), which would make a 50 MiB upload need about 0.9 MB/s. A media
upload (``POST /_matrix/media/v3/upload``, its r0 form, ``PUT
/_matrix/media/v3/upload/{serverName}/{mediaId}``) that declares its Content-Length gets
an allowance instead: after ``body_timeout`` seconds of grace the body must keep arriving
at ``media.min_upload_rate`` bytes per second on average since the request started, and
all of it within ``body_timeout + length / min_upload_rate`` seconds, the length counted
up to ``media.max_upload_size`` (so at most ``body_timeout + max_upload_size /
min_upload_rate``: 860 s at the defaults). An upload that stalls is cut as soon as it falls
behind (checked every ``CHECK_SECONDS``), with the listener's 408. Any other request, an
upload without a Content-Length (chunked), or a rate of 0 keeps ``body_timeout``.

An unauthenticated upload gets its 401 before its body is read, so the allowance only ever
runs for a logged-in user's upload. Pure code: the guard (connections.py) measures.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

CHECK_SECONDS = 5.0  # at most this long between two checks of an upload's progress

_UPLOAD_PATH = re.compile(r"/_matrix/media/(?:v3|r0)/upload(?:/[^/]+/[^/]+)?/?")


@dataclass(frozen=True, slots=True)
class BodyAllowance:
    grace: float  # seconds before the rate applies
    rate: float  # bytes per second at least, on average since the start, after the grace
    deadline: float  # seconds the whole body may take at most

    @property
    def check_every(self) -> float:
        return min(CHECK_SECONDS, self.grace)

    def keeps_up(self, elapsed: float, received: int) -> bool:
        """Whether a body that got ``received`` bytes in ``elapsed`` seconds may go on."""
        return elapsed < self.deadline and received >= (elapsed - self.grace) * self.rate


Allowance = Callable[[str, str, int | None], BodyAllowance | None]  # (method, path, Content-Length)


def upload_allowance(body_timeout: float, min_rate: int, max_size: int) -> Allowance:
    """The allowance of a request's body: ``None`` (the listener's ``body_timeout``) but for
    a media upload with a Content-Length."""

    def allowance(method: str, path: str, length: int | None) -> BodyAllowance | None:
        if min_rate <= 0 or length is None or method not in ("POST", "PUT") or not _UPLOAD_PATH.fullmatch(path):
            return None
        deadline = body_timeout + min(length, max_size) / min_rate
        return BodyAllowance(body_timeout, float(min_rate), deadline) if deadline > body_timeout else None

    return allowance
