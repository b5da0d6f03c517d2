"""Errors raised by the event core.

    EventError                     base of everything raised here
     +-- UnsupportedRoomVersion    a room version we do not implement
     +-- EventFormatError          the PDU breaks the format rules of its room version
     +-- SignatureError            a required signature is missing or does not verify
     +-- AuthError                 an authorization rule rejected the event (names the rule)
     +-- StateResolutionError      state resolution could not run on its input

None of them carries an HTTP status: the HTTP edge maps them to Matrix error codes.
"""

from __future__ import annotations


class EventError(Exception):
    """Base class for every error of the event core."""


class UnsupportedRoomVersion(EventError):
    def __init__(self, version: object) -> None:
        super().__init__(f"unsupported room version: {version!r}")
        self.version = version


class EventFormatError(EventError):
    """The event is malformed for its room version."""


class SignatureError(EventError):
    """A signature the event must carry is missing or invalid."""


class AuthError(EventError):
    """An authorization rule rejected the event.

    ``rule`` names the rule of the spec's list (for example ``"5.3.2"`` or ``"create.1"``)
    so that logs and tests can say which rule fired.
    """

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"auth rule {rule}: {reason}")
        self.rule = rule
        self.reason = reason


class StateResolutionError(EventError):
    """State resolution was given input it cannot resolve (for example a missing event)."""
