"""Errors at the HTTP edge.

    MatrixError(status, errcode, message)   a request fails with a Matrix error body
     +-- raised by handlers and by the request helpers in http.py
    FederationRequestError(destination, message, status, errcode, body)
     +-- an outbound request to another server failed (raised by net/client.py; here, so
         that what only catches it, such as the key ring, need not import the client)

Core errors (homeserver.events.errors, storage, crypto) carry no HTTP status; the handlers
translate them to a MatrixError where they meet HTTP.
"""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    def __init__(self, status: int, errcode: str, message: str, **extra: Any) -> None:
        super().__init__(f"{status} {errcode}: {message}")
        self.status = status
        self.errcode = errcode
        self.message = message
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.message, **self.extra}


class FederationRequestError(Exception):
    """An outbound federation request failed (transport error, timeout or non-2xx reply)."""

    def __init__(
        self, destination: str, message: str, status: int | None = None,
        errcode: str | None = None, body: Any = None,
    ) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination
        self.status = status
        self.errcode = errcode
        self.body = body


def unauthorized(message: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", message)


def forbidden(message: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", message)


def bad_json(message: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", message)


def not_found(message: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", message)
