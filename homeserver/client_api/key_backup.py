"""Server-side key backups (the spec's "Server-side key backups"): ``/room_keys/version``
(create, read the current or a given version, update its ``auth_data``, delete) and
``/room_keys/keys`` for a whole backup, one room or one session (store, read, delete).

Guarantees: keys are stored only into the current version (another existing version:
403 M_WRONG_ROOM_KEYS_VERSION with ``current_version``; none: 404 M_NOT_FOUND); a stored
session is replaced only by a better key (``storage/key_backup.should_replace``); every
store and delete answers the version's ``etag`` (changed whenever its keys changed) and
``count``; bodies are bounded (``client.max_body_bytes``, ``MAX_AUTH_DATA_BYTES``,
``MAX_SESSION_DATA_BYTES``, ``MAX_KEYS_PER_REQUEST``) and malformed ones refused with
M_BAD_JSON / M_INVALID_PARAM / M_TOO_LARGE, storing nothing.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator
from homeserver.config import ClientConfig
from homeserver.errors import MatrixError, not_found
from homeserver.http import json_response, read_json_object
from homeserver.storage.key_backup import BackupVersion, KeyBackupStore, SessionKey

MAX_ALGORITHM_BYTES = 255
MAX_AUTH_DATA_BYTES = 64 * 1024
MAX_SESSION_DATA_BYTES = 64 * 1024
MAX_KEYS_PER_REQUEST = 10_000
MAX_ID_BYTES = 255


def _bad(message: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", message)


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise _bad(f"{name} must be a non-negative integer")
    return value


def parse_session_key(value: object) -> SessionKey:
    """The spec's KeyBackupData, checked."""
    if not isinstance(value, dict):
        raise _bad("A session's key must be an object")
    verified = value.get("is_verified")
    if not isinstance(verified, bool):
        raise _bad("is_verified must be a boolean")
    data = value.get("session_data")
    if not isinstance(data, dict):
        raise _bad("session_data must be an object")
    if _size(data) > MAX_SESSION_DATA_BYTES:
        raise MatrixError(413, "M_TOO_LARGE", f"session_data exceeds {MAX_SESSION_DATA_BYTES} bytes")
    return SessionKey(_int(value.get("first_message_index"), "first_message_index"),
                      _int(value.get("forwarded_count"), "forwarded_count"), verified, data)


def _check_id(value: object, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value.encode("utf-8")) <= MAX_ID_BYTES:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be 1 to {MAX_ID_BYTES} bytes")
    return value


def parse_sessions(value: object, room_id: str, into: dict[str, dict[str, SessionKey]]) -> None:
    if not isinstance(value, dict):
        raise _bad("sessions must be an object of session ID -> key")
    for session_id, key in value.items():
        into.setdefault(room_id, {})[_check_id(session_id, "A session ID")] = parse_session_key(key)
        if sum(len(s) for s in into.values()) > MAX_KEYS_PER_REQUEST:
            raise MatrixError(400, "M_INVALID_PARAM", f"At most {MAX_KEYS_PER_REQUEST} keys per request")


def _version_json(v: BackupVersion) -> dict[str, Any]:
    return {"algorithm": v.algorithm, "auth_data": v.auth_data, "count": v.count, "etag": v.etag,
            "version": v.version}


def _parse_version_body(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    algorithm = body.get("algorithm")
    if not isinstance(algorithm, str) or not 0 < len(algorithm.encode("utf-8")) <= MAX_ALGORITHM_BYTES:
        raise _bad("algorithm must be a non-empty string")
    auth_data = body.get("auth_data")
    if not isinstance(auth_data, dict):
        raise _bad("auth_data must be an object")
    if _size(auth_data) > MAX_AUTH_DATA_BYTES:
        raise MatrixError(413, "M_TOO_LARGE", f"auth_data exceeds {MAX_AUTH_DATA_BYTES} bytes")
    return algorithm, auth_data


class KeyBackupAPI:
    def __init__(self, config: ClientConfig, auth: Authenticator, store: KeyBackupStore) -> None:
        self.config = config
        self.auth = auth
        self.store = store

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3/room_keys"
        routes: list[web.RouteDef] = [
            web.post(f"{p}/version", self.create_version),
            web.get(f"{p}/version", self.get_version),
            web.get(f"{p}/version/{{version}}", self.get_version),
            web.put(f"{p}/version/{{version}}", self.update_version),
            web.delete(f"{p}/version/{{version}}", self.delete_version),
        ]
        for path in (f"{p}/keys", f"{p}/keys/{{room_id}}", f"{p}/keys/{{room_id}}/{{session_id}}"):
            routes += [web.get(path, self.get_keys), web.put(path, self.put_keys),
                       web.delete(path, self.delete_keys)]
        return routes

    # ------------------------------------------------------------------ versions

    async def create_version(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        algorithm, auth_data = _parse_version_body(await read_json_object(request, self.config.max_body_bytes))
        return json_response({"version": await self.store.create_version(req.user_id, algorithm, auth_data)})

    async def get_version(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        version = request.match_info.get("version")
        if version is None:
            found = await self.store.current_version(req.user_id)
            if found is None:
                raise not_found("No current backup version")
        else:
            found = await self.store.get_version(req.user_id, version)
            if found is None:
                raise not_found(f"Unknown backup version {version[:50]!r}")
        return json_response(_version_json(found))

    async def update_version(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        version = request.match_info["version"]
        body = await read_json_object(request, self.config.max_body_bytes)
        algorithm, auth_data = _parse_version_body(body)
        if "version" in body and body["version"] != version:
            raise MatrixError(400, "M_INVALID_PARAM", "The body's version does not match the path's")
        found = await self.store.get_version(req.user_id, version)
        if found is None:
            raise not_found(f"Unknown backup version {version[:50]!r}")
        if algorithm != found.algorithm:
            raise MatrixError(400, "M_INVALID_PARAM", "A backup version's algorithm cannot change")
        if not await self.store.update_auth_data(req.user_id, version, auth_data):
            raise not_found(f"Unknown backup version {version[:50]!r}")
        return json_response({})

    async def delete_version(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        version = request.match_info["version"]
        if not await self.store.delete_version(req.user_id, version):
            raise not_found(f"Unknown backup version {version[:50]!r}")
        return json_response({})

    # ------------------------------------------------------------------ keys

    def _version_param(self, request: web.Request) -> str:
        version = request.query.get("version")
        if version is None:
            raise MatrixError(400, "M_MISSING_PARAM", "The version query parameter is required")
        return version

    async def _writable(self, user_id: str, version: str) -> None:
        """Keys are written to the current version only."""
        current = await self.store.current_version(user_id)
        if current is not None and current.version == version:
            return
        if current is None or await self.store.get_version(user_id, version) is None:
            raise not_found(f"Unknown backup version {version[:50]!r}")
        raise MatrixError(403, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version", current_version=current.version)

    async def put_keys(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        version = self._version_param(request)
        room_id, session_id = request.match_info.get("room_id"), request.match_info.get("session_id")
        body = await read_json_object(request, self.config.max_body_bytes)
        keys: dict[str, dict[str, SessionKey]] = {}
        if room_id is None:
            rooms = body.get("rooms")
            if not isinstance(rooms, dict):
                raise _bad("rooms must be an object of room ID -> sessions")
            for rid, room in rooms.items():
                if not isinstance(room, dict):
                    raise _bad("Each room must be an object with sessions")
                parse_sessions(room.get("sessions"), _check_id(rid, "A room ID"), keys)
        elif session_id is None:
            parse_sessions(body.get("sessions"), room_id, keys)
        else:
            keys[room_id] = {session_id: parse_session_key(body)}
        await self._writable(req.user_id, version)
        stored = await self.store.put_keys(req.user_id, version, keys)
        if stored is None:
            raise not_found(f"Unknown backup version {version[:50]!r}")
        return json_response({"etag": stored.etag, "count": stored.count})

    async def get_keys(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        version = self._version_param(request)
        room_id, session_id = request.match_info.get("room_id"), request.match_info.get("session_id")
        if await self.store.get_version(req.user_id, version) is None:
            raise not_found(f"Unknown backup version {version[:50]!r}")
        keys = await self.store.get_keys(req.user_id, version, room_id, session_id)
        if room_id is None:
            return json_response({"rooms": {
                rid: {"sessions": {sid: k.to_json() for sid, k in sessions.items()}} for rid, sessions in keys.items()
            }})
        sessions = keys.get(room_id, {})
        if session_id is None:
            return json_response({"sessions": {sid: k.to_json() for sid, k in sessions.items()}})
        key = sessions.get(session_id)
        if key is None:
            raise not_found("No key backed up for this session")
        return json_response(key.to_json())

    async def delete_keys(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        version = self._version_param(request)
        room_id, session_id = request.match_info.get("room_id"), request.match_info.get("session_id")
        stored = await self.store.delete_keys(req.user_id, version, room_id, session_id)
        if stored is None:
            raise not_found(f"Unknown backup version {version[:50]!r}")
        return json_response({"etag": stored.etag, "count": stored.count})
