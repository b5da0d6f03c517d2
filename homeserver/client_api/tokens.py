"""Stream tokens handed to clients.

A sync token ``s<events>_<invites>_<ephemeral ms>_<account data>_<device lists>`` names a
position in five streams: the events table's stream ordering, the received-invites table's
stream id, the wall-clock millisecond up to which typing and receipts were delivered, the
account data stream id and the device-list stream position. A token of the older three-
or four-part form still parses, with the missing positions 0 (the next sync then gives all
account data again, which is harmless, and no device-list changes). Optional suffixes:
``_t<to-device>`` (the device's to-device position) and ``_p<presence>`` (the presence
stream position, presence/state.py; 0 when absent: every known presence again). A pagination
token ``p<events>`` (``prev_batch``, ``/messages`` start/end) names a position between two
events: position P lies between the events with orderings P and P+1. Backfilled history
has negative orderings (below everything else), so a page position may be negative
(``p-42``). ``/messages`` also accepts a sync token (its event position).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from homeserver.errors import MatrixError

_SYNC = re.compile(
    r"^s(\d{1,18})_(\d{1,18})_(\d{1,18})(?:_(\d{1,18})(?:_(\d{1,18}))?)?(?:_t(\d{1,18}))?(?:_p(\d{1,18}))?$"
)
_PAGE = re.compile(r"^p(-?\d{1,18})$")
# Below every stream ordering: the start of a room's timeline, backfilled history included.
FIRST_POSITION = -(10**17)


@dataclass(frozen=True, slots=True)
class SyncToken:
    events: int
    invites: int
    ephemeral_ms: int
    account_data: int = 0
    device_lists: int = 0
    to_device: int = 0
    presence: int = 0

    def encode(self) -> str:
        return (f"s{self.events}_{self.invites}_{self.ephemeral_ms}_{self.account_data}_{self.device_lists}"
                f"_t{self.to_device}" + (f"_p{self.presence}" if self.presence else ""))


def parse_sync_token(raw: str) -> SyncToken:
    m = _SYNC.match(raw)
    if m is None:
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid since token")
    return SyncToken(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4) or 0),
                     int(m.group(5) or 0), int(m.group(6) or 0), int(m.group(7) or 0))


def page_token(position: int) -> str:
    return f"p{max(FIRST_POSITION, position)}"


def parse_page_token(raw: str) -> int:
    m = _PAGE.match(raw)
    if m is not None:
        return max(FIRST_POSITION, int(m.group(1)))
    s = _SYNC.match(raw)
    if s is not None:
        return int(s.group(1))
    raise MatrixError(400, "M_INVALID_PARAM", "Invalid pagination token")
