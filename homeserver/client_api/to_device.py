"""Send-to-device messaging for clients: ``PUT /sendToDevice/{eventType}/{txnId}`` and
/sync's ``to_device`` section (docs/to_device_and_backup.md).

Guarantees:

* One effect per (user, device, txnId): the txnId is recorded in the transaction that stores
  the local messages and queues the remote ones, so a retry (or a concurrent twin) delivers
  nothing twice and answers 200.
* Local targets are stored in their devices' inboxes (``*``: every device the user has
  now; an unknown device gets nothing); remote targets leave as ``m.direct_to_device``
  EDUs through the one sender, one target server per EDU, each EDU of at most
  ``MAX_EDU_BYTES`` of messages and its own ``message_id``.
* Bounds: the body (``client.max_body_bytes``), each message's content
  (``MAX_MESSAGE_BYTES``, else 413 M_TOO_LARGE), the devices one request addresses
  (``MAX_TARGETS``), a token bucket per sending device (429 M_LIMIT_EXCEEDED), and each
  device's queue (``ToDeviceStore.max_per_device``: past it the oldest messages are dropped
  and counted in ``hs_to_device_dropped_total{reason="queue_full"}``; the sender is not
  refused, since one abandoned device must not stop messages to the user's others).
* /sync gives a device its messages past the since-token's to-device position, at most
  ``SYNC_LIMIT`` at a time; a since-token shows what the device received, and everything up
  to its position is deleted then. Local deliveries wake the recipient's long-polls.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from homeserver.client_api.common import Authenticator, Requester
from homeserver.client_api.ratelimit import RateLimiter
from homeserver.client_api.tokens import SyncToken
from homeserver.config import ClientConfig, RateLimitConfig
from homeserver.errors import MatrixError
from homeserver.events.identifiers import is_valid_user_id, server_name_of
from homeserver.http import json_response, read_json_object
from homeserver.metrics import Metrics
from homeserver.notifier import Notifier
from homeserver.rooms.outbox import Outbox
from homeserver.storage.to_device import Message, Stored, ToDeviceStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

# One message's content, as compact JSON.
MAX_MESSAGE_BYTES = 16 * 1024
# The messages of one m.direct_to_device EDU (a request to one server may become several).
MAX_EDU_BYTES = 32 * 1024
# Devices (or wildcards) one request addresses.
MAX_TARGETS = 10_000
MAX_ID_BYTES = 255
# Messages one /sync response gives a device.
SYNC_LIMIT = 100
# Requests per sending device: a burst of 100, then 20 a second.
SEND_RATE = RateLimitConfig(per_second=20.0, burst_count=100)


def _bad(message: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", message)


def _short(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value.encode("utf-8")) <= MAX_ID_BYTES


def encoded_size(content: Mapping[str, Any]) -> int:
    return len(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def parse_messages(body: Mapping[str, Any]) -> list[Message]:
    """The ``messages`` map of a /sendToDevice body, checked and bounded."""
    messages = body.get("messages")
    if not isinstance(messages, dict):
        raise _bad("messages must be an object of user ID -> device ID -> content")
    out: list[Message] = []
    for user_id, by_device in messages.items():
        if not is_valid_user_id(user_id):
            raise MatrixError(400, "M_INVALID_PARAM", f"Not a user ID: {user_id[:100]!r}")
        if not isinstance(by_device, dict):
            raise _bad("Each user's messages must be an object of device ID -> content")
        for device_id, content in by_device.items():
            if not _short(device_id):
                raise MatrixError(400, "M_INVALID_PARAM", "A device ID must be 1 to 255 bytes")
            if not isinstance(content, dict):
                raise _bad("Each message's content must be an object")
            if encoded_size(content) > MAX_MESSAGE_BYTES:
                raise MatrixError(413, "M_TOO_LARGE", f"A message's content exceeds {MAX_MESSAGE_BYTES} bytes")
            out.append(Message(user_id, device_id, content))
            if len(out) > MAX_TARGETS:
                raise MatrixError(400, "M_INVALID_PARAM", f"At most {MAX_TARGETS} devices per request")
    return out


def edu_chunks(sender: str, event_type: str, messages: list[Message]) -> list[dict[str, Any]]:
    """The m.direct_to_device EDU contents carrying ``messages`` (all for one server):
    each holds at most MAX_EDU_BYTES of contents and has its own message_id."""
    chunks: list[dict[str, Any]] = []
    current: dict[str, dict[str, Any]] = {}
    size = 0
    for m in messages:
        cost = encoded_size(m.content) + len(m.user_id) + len(m.device_id) + 8
        if current and size + cost > MAX_EDU_BYTES:
            chunks.append(current)
            current, size = {}, 0
        current.setdefault(m.user_id, {})[m.device_id] = dict(m.content)
        size += cost
    if current:
        chunks.append(current)
    return [{"sender": sender, "type": event_type, "message_id": secrets.token_urlsafe(16), "messages": c}
            for c in chunks]


def wake_recipients(notifier: Notifier, metrics: Metrics, stored: Stored) -> None:
    """After the storing transaction committed: wake the recipients' /sync long-polls,
    count what the queue bounds dropped."""
    for user_id in {u for u, _ in stored.devices}:
        notifier.wake_user(user_id)
    if stored.dropped:
        metrics.to_device_dropped.labels("queue_full").inc(stored.dropped)


class ToDeviceAPI:
    def __init__(
        self, server_name: str, config: ClientConfig, auth: Authenticator, store: ToDeviceStore, sender: Outbox,
        notifier: Notifier, metrics: Metrics, *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.server_name = server_name
        self.config = config
        self.auth = auth
        self.store = store
        self.sender = sender
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self.limiter = RateLimiter(SEND_RATE, clock=clock)

    def routes(self) -> list[web.RouteDef]:
        return [web.put("/_matrix/client/v3/sendToDevice/{event_type}/{txn_id}", self.send)]

    async def send(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        event_type, txn_id = request.match_info["event_type"], request.match_info["txn_id"]
        if not _short(event_type) or not _short(txn_id):
            raise MatrixError(400, "M_INVALID_PARAM", "eventType and txnId must be 1 to 255 bytes")
        self.limiter.enforce(f"{req.user_id}\n{req.device_id}")
        messages = parse_messages(await read_json_object(request, self.config.max_body_bytes))
        local: list[Message] = []
        remote: dict[str, list[Message]] = {}
        for m in messages:
            server = server_name_of(m.user_id)
            if server == self.server_name:
                local.append(m)
            else:
                remote.setdefault(server, []).append(m)
        message_id = secrets.token_urlsafe(16)
        async with self.store.db.transaction() as conn:
            if not await self.store.claim_txn(conn, req.user_id, req.device_id, txn_id, self.clock.time_ms()):
                return json_response({})  # a retry: done the first time
            stored = await self.store.add(conn, req.user_id, event_type, message_id, local)
            for server, theirs in sorted(remote.items()):
                for content in edu_chunks(req.user_id, event_type, theirs):
                    await self.sender.enqueue_edu("m.direct_to_device", content, [server], conn)
            conn.call_after(lambda: wake_recipients(self.notifier, self.metrics, stored))
        return json_response({})


class ToDeviceSync:
    """/sync's ``to_device`` section for the requesting device."""

    def __init__(self, store: ToDeviceStore, limit: int = SYNC_LIMIT) -> None:
        self.store = store
        self.limit = limit

    async def acknowledge(self, req: Requester, since: SyncToken | None) -> None:
        """The since-token proves receipt of everything up to its to-device position."""
        if since is not None:
            await self.store.acknowledge(req.user_id, req.device_id, since.to_device)

    async def section(self, req: Requester, since: SyncToken | None) -> tuple[list[dict[str, Any]], int]:
        """The events to give, and the to-device position of the next token."""
        after = since.to_device if since is not None else 0
        found = await self.store.pending(req.user_id, req.device_id, after, self.limit)
        events = [{"sender": d.sender, "type": d.type, "content": d.content} for d in found]
        return events, (found[-1].stream_id if found else after)
