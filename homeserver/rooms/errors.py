"""Errors of the room service (creating events, joins, invites, leaves).

    RoomError                  base of everything raised here
     +-- RoomNotFound          no such room here (and none could be reached over federation)
     +-- NotAllowed            the authorization rules or power levels forbid it (``rule``)
     +-- BadRoomRequest        the request itself is malformed or contradictory
     +-- UnsupportedVersion    a room version we do not implement, or no version in common
     +-- RemoteJoinFailed      no resident server could complete the handshake

None carries an HTTP status: the client API maps them to M_NOT_FOUND, M_FORBIDDEN,
M_BAD_JSON, M_UNSUPPORTED_ROOM_VERSION / M_INCOMPATIBLE_ROOM_VERSION and M_UNKNOWN.
"""

from __future__ import annotations


class RoomError(Exception):
    """Base class for every error of the room service."""


class RoomNotFound(RoomError):
    def __init__(self, room_id: str, reason: str = "unknown room") -> None:
        super().__init__(f"{room_id}: {reason}")
        self.room_id = room_id
        self.reason = reason


class NotAllowed(RoomError):
    """Forbidden; ``rule`` names the auth rule that fired (None for a service-level check)."""

    def __init__(self, reason: str, rule: str | None = None) -> None:
        super().__init__(reason if rule is None else f"auth rule {rule}: {reason}")
        self.reason = reason
        self.rule = rule


class BadRoomRequest(RoomError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedVersion(RoomError):
    def __init__(self, version: object, reason: str = "unsupported room version") -> None:
        super().__init__(f"{reason}: {version!r}")
        self.version = version
        self.reason = reason


class RemoteJoinFailed(RoomError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
