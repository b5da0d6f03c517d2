"""``E2eKeys``: the one place keys are stored and read (client API, federation API, /sync).

- Local writes (uploads, cross-signing, signatures, deleted devices) take a position in
  the device-list stream; once committed, the /sync long-polls of every user sharing a
  room with the owner are woken and the servers of those users are sent an
  ``m.device_list_update`` (device changes) or ``m.signing_key_update`` (cross-signing) EDU
  through the one sender, with ``stream_id`` and ``prev_id`` (the user's previous device
  position).
- Remote users are asked through the one outbound client, one request per server, all at
  once and each bounded by ``timeout``; a server that fails is named in ``failures``.
- Inbound ``m.device_list_update`` EDUs (the door kept only the origin's own users) about a
  user sharing a room with one of ours are applied in order; a ``prev_id`` we have not seen
  marks the list stale and resyncs it with GET /user/devices (bounded). Signatures by a
  user other than the key's owner are shown only to that signer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from homeserver.e2e.validate import MAX_ONE_TIME_KEYS_HELD, bad, is_id, public_key_of, too_large
from homeserver.errors import FederationRequestError
from homeserver.events.identifiers import server_name_of
from homeserver.metrics import Metrics
from homeserver.notifier import Notifier
from homeserver.rooms.outbox import Outbox
from homeserver.storage.database import Database
from homeserver.storage.device_lists import DeviceListStore, RemoteDevice
from homeserver.storage.e2e_keys import E2eKeysStore, NewKey, Signature, TooManyKeys

log = logging.getLogger(__name__)

FED = "/_matrix/federation/v1"
REMOTE_TIMEOUT = 10.0
MAX_REMOTE_REPLY_BYTES = 4 * 1024 * 1024
MAX_REMOTE_DEVICES = 1000

RemoteRequest = Callable[..., Awaitable[Any]]


class E2eKeys:
    def __init__(
        self, server_name: str, db: Database, notifier: Notifier, outbox: Outbox | None,
        request: RemoteRequest | None, *, timeout: float = REMOTE_TIMEOUT, metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics  # inbound device-list EDUs dropped, per reason
        self.server_name = server_name
        self.keys = E2eKeysStore(db)
        self.lists = DeviceListStore(db)
        self.notifier = notifier
        self.outbox = outbox
        # FederationClient.request (the one outbound client); None: remote users fail.
        self._request = request
        self.timeout = timeout

    def is_local(self, user_id: str) -> bool:
        return server_name_of(user_id) == self.server_name

    # ------------------------------------------------------------------ uploads

    async def upload(
        self, user_id: str, device_id: str, device_keys: dict[str, Any] | None,
        one_time: list[NewKey], fallback: list[NewKey],
    ) -> dict[str, int]:
        if one_time:
            try:
                conflicts = await self.keys.add_one_time_keys(user_id, device_id, one_time, MAX_ONE_TIME_KEYS_HELD)
            except TooManyKeys as e:
                raise bad_too_many(e.held) from None
            if conflicts:
                raise bad(f"One-time key {conflicts[0]} already exists with a different content")
        if fallback:
            await self.keys.set_fallback_keys(user_id, device_id, fallback)
        if device_keys is not None:
            position = await self.keys.set_device_keys(user_id, device_id, device_keys)
            if position is not None:
                await self.announce_device(user_id, device_id, position)
        return await self.keys.one_time_key_counts(user_id, device_id)

    async def device_renamed(self, user_id: str, device_id: str) -> None:
        """A device with keys was renamed: its display name is part of what others see."""
        if await self.keys.device_key(user_id, device_id) is None:
            return
        position = await self.lists.bump(user_id, device_id)
        await self.announce_device(user_id, device_id, position)

    async def devices_deleted(self, user_id: str, device_ids: Sequence[str]) -> None:
        for device_id in dict.fromkeys(device_ids):
            async with self.keys.db.transaction() as conn:
                position = await self.keys.delete_device(conn, user_id, device_id)
            await self.announce_device(user_id, device_id, position, deleted=True)

    async def set_cross_signing(self, user_id: str, keys: Mapping[str, dict[str, Any]]) -> None:
        if await self.keys.set_cross_signing_keys(user_id, keys) is None:
            return
        await self._wake_sharing(user_id)
        stored = await self.keys.cross_signing_keys(user_id)
        content: dict[str, Any] = {"user_id": user_id}
        for key_type in ("master", "self_signing"):
            if key_type in stored:
                content[f"{key_type}_key"] = stored[key_type]
        await self._send_edu(user_id, "m.signing_key_update", content)

    async def add_signatures(self, user_id: str, signatures: list[Signature]) -> None:
        """Signatures made by ``user_id``; a device of theirs that was signed is announced."""
        own_devices = [s.target_key_id for s in signatures if s.target_user_id == user_id
                       and await self.keys.device_key(user_id, s.target_key_id) is not None]
        await self.keys.add_signatures(signatures, [user_id] if not own_devices else [])
        for device_id in dict.fromkeys(own_devices):
            position = await self.lists.bump(user_id, device_id)
            await self.announce_device(user_id, device_id, position)
        if not own_devices:
            await self._wake_sharing(user_id)

    # ------------------------------------------------------------------ announcing

    async def _wake_sharing(self, user_id: str) -> set[str]:
        sharing = await self.lists.users_sharing_a_room(user_id)
        for user in sharing | {user_id}:
            if self.is_local(user):
                self.notifier.wake_user(user)
        return sharing

    async def announce_device(self, user_id: str, device_id: str, position: int, *, deleted: bool = False) -> None:
        await self._wake_sharing(user_id)
        if not self.is_local(user_id):
            return
        content: dict[str, Any] = {"user_id": user_id, "device_id": device_id, "stream_id": position,
                                   "prev_id": await self._prev_ids(user_id, position), "deleted": deleted}
        if not deleted:
            found = await self.device_keys_for(user_id, [device_id], None)
            keys = found.get(device_id)
            if keys is not None:
                name = (keys.get("unsigned") or {}).get("device_display_name")
                if isinstance(name, str):
                    content["device_display_name"] = name
                content["keys"] = keys
        await self._send_edu(user_id, "m.device_list_update", content)

    async def _prev_ids(self, user_id: str, position: int) -> list[int]:
        return [p for p in await self.lists.last_device_positions(user_id, 2) if p < position][:1]

    async def _send_edu(self, user_id: str, edu_type: str, content: dict[str, Any]) -> None:
        if self.outbox is None:
            return
        servers = {server_name_of(u) for u in await self.lists.users_sharing_a_room(user_id)}
        servers.discard(self.server_name)
        if servers:
            await self.outbox.enqueue_edu(edu_type, content, sorted(servers))

    # ------------------------------------------------------------------ reading keys

    async def device_keys_for(
        self, user_id: str, device_ids: Sequence[str], requester: str | None
    ) -> dict[str, dict[str, Any]]:
        found = await self.keys.device_keys(user_id, device_ids)
        await self._merge_signatures(user_id, found, requester)
        return found

    async def _merge_signatures(self, user_id: str, by_key: dict[str, dict[str, Any]], requester: str | None) -> None:
        """Add stored signatures of ``user_id``'s keys (device ID or public key -> key); a
        signature by another user only for that signer."""
        if not by_key:
            return
        for s in await self.keys.signatures_of(user_id):
            key = by_key.get(s.target_key_id)
            if key is None or (s.signer_user_id != user_id and s.signer_user_id != requester):
                continue
            sigs = key.setdefault("signatures", {})
            if isinstance(sigs, dict):
                sigs.setdefault(s.signer_user_id, {})[s.signer_key_id] = s.signature

    async def local_query(
        self, wanted: Mapping[str, Sequence[str]], requester: str | None
    ) -> dict[str, dict[str, Any]]:
        """The keys of local users: device_keys, master_keys, self_signing_keys and, for the
        requester themself, user_signing_keys."""
        out: dict[str, dict[str, Any]] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        if requester is not None:
            out["user_signing_keys"] = {}
        for user_id, devices in wanted.items():
            if not self.is_local(user_id):
                continue
            out["device_keys"][user_id] = await self.device_keys_for(user_id, devices, requester)
            await self._cross_signing_into(out, user_id, requester)
        return out

    async def _cross_signing_into(self, out: dict[str, dict[str, Any]], user_id: str, requester: str | None) -> None:
        cross = await self.keys.cross_signing_keys(user_id)
        by_public: dict[str, dict[str, Any]] = {}
        for key in cross.values():
            public = public_key_of(key)
            if public is not None:
                by_public[public] = key
        await self._merge_signatures(user_id, by_public, requester)
        if "master" in cross:
            out["master_keys"][user_id] = cross["master"]
        if "self_signing" in cross:
            out["self_signing_keys"][user_id] = cross["self_signing"]
        if "user_signing" in cross and requester == user_id:
            out["user_signing_keys"][user_id] = cross["user_signing"]

    async def query(
        self, requester: str, wanted: Mapping[str, Sequence[str]], timeout: float | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = await self.local_query(wanted, requester)
        out["failures"] = {}
        by_server: dict[str, dict[str, list[str]]] = {}
        for user_id, devices in wanted.items():
            if not self.is_local(user_id):
                by_server.setdefault(server_name_of(user_id), {})[user_id] = list(devices)
        replies = await self._ask_all("POST", f"{FED}/user/keys/query",
                                      {s: {"device_keys": q} for s, q in by_server.items()}, out["failures"], timeout)
        for server, reply in replies.items():
            await self._take_remote_query(server, by_server[server], reply, out, requester)
        return out

    async def _take_remote_query(
        self, server: str, asked: dict[str, list[str]], reply: Any, out: dict[str, Any], requester: str
    ) -> None:
        device_keys = reply.get("device_keys") if isinstance(reply, dict) else None
        for user_id, devices in (device_keys.items() if isinstance(device_keys, dict) else ()):
            if user_id not in asked or not isinstance(devices, dict):
                continue
            kept = {d: k for d, k in list(devices.items())[:MAX_REMOTE_DEVICES]
                    if isinstance(k, dict) and k.get("user_id") == user_id and k.get("device_id") == d}
            await self._merge_signatures(user_id, kept, requester)
            out["device_keys"][user_id] = kept
        for field in ("master_keys", "self_signing_keys"):
            section = reply.get(field) if isinstance(reply, dict) else None
            for user_id, key in (section.items() if isinstance(section, dict) else ()):
                if user_id in asked and isinstance(key, dict) and key.get("user_id") == user_id:
                    public = public_key_of(key)
                    if public is not None:
                        await self._merge_signatures(user_id, {public: key}, requester)
                    out[field][user_id] = key

    async def _ask_all(
        self, method: str, path: str, bodies: Mapping[str, Any], failures: dict[str, Any],
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send each server its body at once (each bounded by ``timeout``, at most the
        service's); the replies of those that answered, the others named in ``failures``."""
        limit = self.timeout if timeout is None else max(0.1, min(timeout, self.timeout))

        async def ask(server: str, body: Any) -> Any:
            if self._request is None:
                raise FederationRequestError(server, "federation is not available")
            return await asyncio.wait_for(
                self._request(method, server, path, content=body, timeout=limit, max_bytes=MAX_REMOTE_REPLY_BYTES),
                limit + 1,
            )
        servers = list(bodies)
        results = await asyncio.gather(*(ask(s, bodies[s]) for s in servers), return_exceptions=True)
        replies: dict[str, Any] = {}
        for server, result in zip(servers, results, strict=True):
            if isinstance(result, FederationRequestError):
                failures[server] = {"status": result.status or 503, "message": str(result)[:200]}
            elif isinstance(result, (TimeoutError, asyncio.TimeoutError)):
                failures[server] = {"status": 504, "message": "timed out"}
            elif isinstance(result, BaseException):
                log.warning("remote key request failed", extra={"destination": server, "error": repr(result)})
                failures[server] = {"status": 503, "message": "request failed"}
            else:
                replies[server] = result
        return replies

    # ------------------------------------------------------------------ claims

    async def local_claim(self, wanted: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for user_id, devices in wanted.items():
            if not self.is_local(user_id):
                continue
            for device_id, algorithm in devices.items():
                claimed = await self.keys.claim(user_id, device_id, algorithm)
                if claimed is not None:
                    out.setdefault(user_id, {})[device_id] = {claimed[0]: claimed[1]}
        return out

    async def claim(self, wanted: Mapping[str, Mapping[str, str]], timeout: float | None = None) -> dict[str, Any]:
        one_time = await self.local_claim(wanted)
        failures: dict[str, Any] = {}
        by_server: dict[str, dict[str, Mapping[str, str]]] = {}
        for user_id, devices in wanted.items():
            if not self.is_local(user_id):
                by_server.setdefault(server_name_of(user_id), {})[user_id] = devices
        replies = await self._ask_all("POST", f"{FED}/user/keys/claim",
                                      {s: {"one_time_keys": q} for s, q in by_server.items()}, failures, timeout)
        for server, reply in replies.items():
            keys = reply.get("one_time_keys") if isinstance(reply, dict) else None
            for user_id, devices in (keys.items() if isinstance(keys, dict) else ()):
                asked = by_server[server].get(user_id)
                if asked is None or not isinstance(devices, dict):
                    continue
                for device_id, key in devices.items():
                    if device_id in asked and isinstance(key, dict) and len(key) == 1:
                        one_time.setdefault(user_id, {})[device_id] = key
        return {"one_time_keys": one_time, "failures": failures}

    # ------------------------------------------------------------------ sync and changes

    async def changes(self, user_id: str, since: tuple[int, int], upto: tuple[int, int]) -> dict[str, list[str]]:
        """Users whose device lists changed between two (device-list, events) positions, or
        who started sharing a room with ``user_id`` (``changed``); users who no longer share
        any room with them (``left``)."""
        changed = set(await self.lists.changed(user_id, since[0], upto[0]))
        if since[1] < upto[1]:
            sharing = await self.lists.users_sharing_a_room(user_id)
            joined = await self.lists.membership_moves(user_id, since[1], upto[1], leaving=False)
            changed |= (joined & sharing) - {user_id}
            gone = await self.lists.membership_moves(user_id, since[1], upto[1], leaving=True)
            left = sorted(gone - sharing - {user_id})
        else:
            left = []
        return {"changed": sorted(changed - set(left)), "left": left}

    async def sync_section(
        self, user_id: str, device_id: str, since: tuple[int, int] | None, upto: tuple[int, int]
    ) -> dict[str, Any]:
        """/sync's part: device_lists (positions: (device lists, events)), the device's
        one-time key counts and unused fallback key types."""
        out: dict[str, Any] = {
            "device_lists": await self.changes(user_id, since, upto) if since is not None
            else {"changed": [], "left": []},
            "device_one_time_keys_count": await self.keys.one_time_key_counts(user_id, device_id),
        }
        out["device_one_time_keys_count"].setdefault("signed_curve25519", 0)
        out["device_unused_fallback_key_types"] = await self.keys.unused_fallback_key_types(user_id, device_id)
        return out

    # ------------------------------------------------------------------ federation in

    async def on_device_list_update(self, origin: str, content: Mapping[str, Any]) -> None:
        user_id, device_id, stream_id = content.get("user_id"), content.get("device_id"), content.get("stream_id")
        prev = content.get("prev_id", [])
        if (not is_id(user_id) or not is_id(device_id) or isinstance(stream_id, bool)
                or not isinstance(stream_id, int) or not isinstance(prev, list)):
            self._dropped(origin, "malformed")
            return
        assert isinstance(user_id, str) and isinstance(device_id, str)
        if server_name_of(user_id) != origin:
            self._dropped(origin, "foreign_user")
            return
        if not await self._tracked(user_id):
            self._dropped(origin, "not_in_room")
            return
        known = await self.lists.remote_list(user_id)
        if known is not None and not known.stale and stream_id <= known.stream_id:
            return  # seen already
        seen = {known.stream_id} if known is not None and not known.stale else set()
        if known is None and not prev:
            seen = set()
        elif not all(isinstance(p, int) and p in seen for p in prev):
            await self.lists.mark_stale(user_id)
            await self.resync(origin, user_id)
            return
        keys = content.get("keys")
        name = content.get("device_display_name")
        if not isinstance(keys, dict) or keys.get("user_id") != user_id or keys.get("device_id") != device_id:
            keys = None
        await self.lists.apply_remote_update(
            user_id, device_id, stream_id, name if isinstance(name, str) and len(name) <= 1000 else None,
            keys, content.get("deleted") is True,
        )
        await self._wake_sharing(user_id)

    def _dropped(self, origin: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.inbound_edus_dropped.labels(origin, reason).inc()

    async def _tracked(self, user_id: str) -> bool:
        """Whether one of our users shares a room with ``user_id``."""
        return any(self.is_local(u) for u in await self.lists.users_sharing_a_room(user_id))

    async def resync(self, origin: str, user_id: str) -> bool:
        """Fetch ``user_id``'s whole device list from their server; False if it failed
        (the list stays stale: the next update tries again)."""
        if self._request is None:
            return False
        try:
            reply = await asyncio.wait_for(self._request(
                "GET", origin, f"{FED}/user/devices/{quote(user_id, safe='')}", timeout=self.timeout,
                max_bytes=MAX_REMOTE_REPLY_BYTES,
            ), self.timeout + 1)
        except (FederationRequestError, TimeoutError) as e:
            log.info("device list resync failed", extra={"user_id": user_id, "error": str(e)[:200]})
            return False
        if not isinstance(reply, dict) or reply.get("user_id") != user_id:
            return False
        stream_id = reply.get("stream_id")
        devices = reply.get("devices")
        if isinstance(stream_id, bool) or not isinstance(stream_id, int) or not isinstance(devices, list):
            return False
        kept: list[RemoteDevice] = []
        for d in devices[:MAX_REMOTE_DEVICES]:
            if not isinstance(d, dict) or not is_id(d.get("device_id")):
                continue
            keys = d.get("keys")
            if not isinstance(keys, dict) or keys.get("user_id") != user_id or keys.get("device_id") != d["device_id"]:
                keys = None
            name = d.get("device_display_name")
            kept.append(RemoteDevice(d["device_id"], name if isinstance(name, str) else None, keys))
        await self.lists.replace_remote_list(user_id, stream_id, kept)
        cross = {t: reply[f"{t}_key"] for t in ("master", "self_signing")
                 if isinstance(reply.get(f"{t}_key"), dict) and reply[f"{t}_key"].get("user_id") == user_id}
        if cross:
            await self.keys.set_cross_signing_keys(user_id, cross)
        await self._wake_sharing(user_id)
        return True

    async def on_signing_key_update(self, origin: str, content: Mapping[str, Any]) -> None:
        user_id = content.get("user_id")
        if not is_id(user_id) or not isinstance(user_id, str) or server_name_of(user_id) != origin:
            self._dropped(origin, "foreign_user")
            return
        if not await self._tracked(user_id):
            self._dropped(origin, "not_in_room")
            return
        cross = {t: content[f"{t}_key"] for t in ("master", "self_signing")
                 if isinstance(content.get(f"{t}_key"), dict) and content[f"{t}_key"].get("user_id") == user_id}
        if cross and await self.keys.set_cross_signing_keys(user_id, cross) is not None:
            await self._wake_sharing(user_id)

    async def devices_for_federation(self, user_id: str) -> dict[str, Any]:
        """GET /user/devices/{userId} of a local user."""
        devices = []
        for d in await self.lists.local_devices(user_id):
            entry: dict[str, Any] = {"device_id": d.device_id}
            if d.keys is not None:
                keys = (await self.device_keys_for(user_id, [d.device_id], None)).get(d.device_id, d.keys)
                entry["keys"] = keys
            if d.display_name is not None:
                entry["device_display_name"] = d.display_name
            devices.append(entry)
        positions = await self.lists.last_device_positions(user_id, 1)
        out: dict[str, Any] = {"user_id": user_id, "stream_id": positions[0] if positions else 0, "devices": devices}
        cross: dict[str, dict[str, Any]] = {"master_keys": {}, "self_signing_keys": {}, "user_signing_keys": {}}
        await self._cross_signing_into(cross, user_id, None)
        if user_id in cross["master_keys"]:
            out["master_key"] = cross["master_keys"][user_id]
        if user_id in cross["self_signing_keys"]:
            out["self_signing_key"] = cross["self_signing_keys"][user_id]
        return out


def bad_too_many(held: int) -> Exception:
    return too_large(f"The device already holds {held} one-time keys (at most {MAX_ONE_TIME_KEYS_HELD})")
