"""Devices: list, read and rename the user's devices; delete them (one, or several with
``/delete_devices``) behind user-interactive auth with the account's password, as the spec
requires. Deleting a device logs it out: its access tokens stop working at once.

``last_seen_ip`` and ``last_seen_ts`` are null: the server does not record where or when
a token was used.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.client_api.auth import PasswordStage
from homeserver.client_api.common import MAX_DEVICE_DISPLAY_NAME, Authenticator
from homeserver.client_api.ratelimit import RateLimiter
from homeserver.config import ClientConfig
from homeserver.e2e.service import E2eKeys
from homeserver.errors import MatrixError, not_found
from homeserver.http import json_response, read_json_object
from homeserver.storage.users import Device, UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

MAX_DISPLAY_NAME = MAX_DEVICE_DISPLAY_NAME
MAX_DEVICES_PER_REQUEST = 1000


def _device_json(device: Device) -> dict[str, Any]:
    # Every key present, null when unknown, as Synapse answers (matrix-nio requires them).
    return {"device_id": device.device_id, "display_name": device.display_name, "last_seen_ip": None,
            "last_seen_ts": None}


class DevicesAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, users: UserStore, *, clock: Clock = SYSTEM_CLOCK,
        e2e: E2eKeys | None = None,
    ) -> None:
        self.config = config
        self.e2e = e2e  # a deleted device's keys go too, and its owner's device list changes
        self.auth = auth
        self.users = users
        self.password = PasswordStage(users, RateLimiter(config.login_rate_limit, clock=clock), clock=clock)

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3"
        return [
            web.get(f"{p}/devices", self.list_devices),
            web.get(f"{p}/devices/{{device_id}}", self.get_device),
            web.put(f"{p}/devices/{{device_id}}", self.update_device),
            web.delete(f"{p}/devices/{{device_id}}", self.delete_device),
            web.post(f"{p}/delete_devices", self.delete_devices),
        ]

    async def list_devices(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        return json_response({"devices": [_device_json(d) for d in await self.users.devices(req.user_id)]})

    async def get_device(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        device = await self.users.get_device(req.user_id, request.match_info["device_id"])
        if device is None:
            raise not_found("Device not found")
        return json_response(_device_json(device))

    async def update_device(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        name = body.get("display_name")
        if name is not None and not isinstance(name, str):
            raise MatrixError(400, "M_BAD_JSON", "display_name must be a string")
        if name is not None and len(name) > MAX_DISPLAY_NAME:
            raise MatrixError(400, "M_INVALID_PARAM", f"display_name is longer than {MAX_DISPLAY_NAME}")
        device_id = request.match_info["device_id"]
        if "display_name" in body:
            found = await self.users.set_device_display_name(req.user_id, device_id, name)
        else:
            found = await self.users.get_device(req.user_id, device_id) is not None
        if not found:
            raise not_found("Device not found")
        if "display_name" in body and self.e2e is not None:
            await self.e2e.device_renamed(req.user_id, device_id)
        return json_response({})

    async def delete_device(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await self._optional_body(request)
        await self.password.check(req, body.get("auth"))
        await self._delete(req.user_id, [request.match_info["device_id"]])
        return json_response({})

    async def delete_devices(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        devices = body.get("devices")
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise MatrixError(400, "M_BAD_JSON", "devices must be a list of device IDs")
        if len(devices) > MAX_DEVICES_PER_REQUEST:
            raise MatrixError(400, "M_INVALID_PARAM", f"At most {MAX_DEVICES_PER_REQUEST} devices at once")
        await self.password.check(req, body.get("auth"))
        await self._delete(req.user_id, devices)
        return json_response({})

    async def _delete(self, user_id: str, device_ids: list[str]) -> None:
        known = {d.device_id for d in await self.users.devices(user_id)}
        await self.users.delete_devices(user_id, device_ids)
        if self.e2e is not None:
            await self.e2e.devices_deleted(user_id, [d for d in device_ids if d in known])

    async def _optional_body(self, request: web.Request) -> dict[str, Any]:
        # DELETE /devices/{id}: the first request of the auth flow may come without a body.
        if not request.can_read_body:
            return {}
        return await read_json_object(request, self.config.max_body_bytes)
