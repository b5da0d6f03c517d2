"""End-to-end keys for clients: POST /keys/upload, /keys/query, /keys/claim,
/keys/device_signing/upload (behind the account's password, except a user's first upload
or the very same keys again), /keys/signatures/upload, and GET /keys/changes. The work is
``homeserver.e2e.service.E2eKeys``; the shapes and bounds are ``e2e/validate.py``.

Signatures uploaded are verified (ed25519 over the canonical JSON of the signed object
without ``signatures`` and ``unsigned``) against the signer's stored key: a device key
signed by its owner's self-signing key, a master key signed by one of its owner's device
keys, another user's master key signed by the requester's user-signing key. The object
uploaded must be the stored one. Anything else is named in ``failures``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from homeserver.client_api.auth import PasswordStage
from homeserver.client_api.common import Authenticator
from homeserver.client_api.ratelimit import RateLimiter
from homeserver.client_api.tokens import parse_sync_token
from homeserver.config import ClientConfig
from homeserver.e2e import validate as v
from homeserver.e2e.service import E2eKeys
from homeserver.e2e.validate import parse_claim, parse_query
from homeserver.errors import MatrixError
from homeserver.events.canonical import canonical_json, decode_b64
from homeserver.events.identifiers import is_valid_user_id
from homeserver.http import json_response, read_json_object
from homeserver.storage.e2e_keys import Signature
from homeserver.util.clock import SYSTEM_CLOCK, Clock

P = "/_matrix/client/v3"


def _timeout(body: dict[str, Any]) -> float | None:
    """The request's ``timeout`` (ms) for remote servers, in seconds (the service caps it)."""
    value = body.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise v.bad("timeout must be a non-negative integer (milliseconds)")
    return value / 1000


def signed_bytes(obj: dict[str, Any]) -> bytes:
    return canonical_json({k: val for k, val in obj.items() if k not in ("signatures", "unsigned")})


def verify(obj: dict[str, Any], signer: str, key_id: str, public: str) -> bool:
    sig = ((obj.get("signatures") or {}).get(signer) or {}).get(key_id)
    if not isinstance(sig, str):
        return False
    try:
        VerifyKey(decode_b64(public)).verify(signed_bytes(obj), decode_b64(sig))
    except (BadSignatureError, ValueError, TypeError, Exception):
        return False
    return True


class KeysAPI:
    def __init__(
        self, config: ClientConfig, auth: Authenticator, e2e: E2eKeys, password: PasswordStage,
        *, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.auth = auth
        self.e2e = e2e
        self.password = password
        self.clock = clock

    @classmethod
    def build(cls, config: ClientConfig, auth: Authenticator, e2e: E2eKeys, users: Any,
              clock: Clock = SYSTEM_CLOCK) -> KeysAPI:
        limiter = RateLimiter(config.login_rate_limit, clock=clock)
        return cls(config, auth, e2e, PasswordStage(users, limiter, clock=clock), clock=clock)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{P}/keys/upload", self.upload),
            web.post(f"{P}/keys/query", self.query),
            web.post(f"{P}/keys/claim", self.claim),
            web.get(f"{P}/keys/changes", self.changes),
            web.post(f"{P}/keys/device_signing/upload", self.device_signing_upload),
            web.post(f"{P}/keys/signatures/upload", self.signatures_upload),
        ]

    async def upload(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        device_id = req.device_id
        if device_id is None:
            raise v.bad("This access token has no device")
        device_keys = v.object_of(body, "device_keys")
        if device_keys is not None:
            v.device_keys(device_keys, req.user_id, device_id)
        one_time = v.object_of(body, "one_time_keys")
        fallback = v.object_of(body, "fallback_keys")
        if fallback is None:
            fallback = v.object_of(body, "org.matrix.msc2732.fallback_keys")
        otks = v.new_keys(one_time, "one_time_keys", v.MAX_ONE_TIME_KEYS_PER_UPLOAD) if one_time else []
        fbks = v.new_keys(fallback, "fallback_keys", 16) if fallback else []
        if len({k.algorithm for k in fbks}) != len(fbks):
            raise v.invalid("At most one fallback key per algorithm")
        counts = await self.e2e.upload(req.user_id, device_id, device_keys, otks, fbks)
        return json_response({"one_time_key_counts": counts})

    async def query(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        return json_response(await self.e2e.query(req.user_id, parse_query(body), _timeout(body)))

    async def claim(self, request: web.Request) -> web.Response:
        await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        return json_response(await self.e2e.claim(parse_claim(body), _timeout(body)))

    async def changes(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        raw_from, raw_to = request.query.get("from"), request.query.get("to")
        if not raw_from or not raw_to:
            raise MatrixError(400, "M_MISSING_PARAM", "from and to are required")
        since, upto = parse_sync_token(raw_from), parse_sync_token(raw_to)
        return json_response(await self.e2e.changes(
            req.user_id, (since.device_lists, since.events), (upto.device_lists, upto.events)
        ))

    async def device_signing_upload(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        user_id = req.user_id
        new: dict[str, dict[str, Any]] = {}
        publics: dict[str, str] = {}
        for key_type in ("master", "self_signing", "user_signing"):
            if body.get(f"{key_type}_key") is not None:
                new[key_type], publics[key_type] = v.cross_signing_key(body[f"{key_type}_key"], key_type, user_id)
        if not new:
            raise v.bad("No cross-signing keys given")
        stored = await self.e2e.keys.cross_signing_keys(user_id)
        master = new.get("master") or stored.get("master")
        if master is None:
            raise v.invalid("A master key is needed first")
        master_public = v.public_key_of(master)
        for key_type in ("self_signing", "user_signing"):
            if key_type in new and not verify(new[key_type], user_id, f"ed25519:{master_public}", master_public or ""):
                raise v.invalid(f"{key_type}_key is not signed by the master key")
        # The first upload (no master key yet) or the very same keys: no password needed.
        same = all(stored.get(t) == k for t, k in new.items())
        if "master" in stored and not same:
            await self.password.check(req, body.get("auth"))
        await self.e2e.set_cross_signing(user_id, new)
        return json_response({})

    async def signatures_upload(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        if sum(len(x) if isinstance(x, dict) else 1 for x in body.values()) > v.MAX_SIGNED_OBJECTS:
            raise v.too_large(f"At most {v.MAX_SIGNED_OBJECTS} signed objects per upload")
        failures: dict[str, dict[str, Any]] = {}
        accepted: list[Signature] = []
        me = req.user_id
        mine = await self.e2e.keys.cross_signing_keys(me)
        for user_id, objects in body.items():
            if not is_valid_user_id(user_id) or not isinstance(objects, dict):
                raise v.bad("The body must map user IDs to objects")
            for key_id, obj in objects.items():
                if not isinstance(obj, dict):
                    raise v.bad("Each signed object must be an object")
                v.check_signatures(obj.get("signatures"), "signed object")
                error = await self._check_signed(me, mine, user_id, key_id, obj, accepted)
                if error is not None:
                    failures.setdefault(user_id, {})[key_id] = {"errcode": error[0], "error": error[1]}
        if accepted:
            await self.e2e.add_signatures(me, accepted)
        return json_response({"failures": failures})

    async def _check_signed(
        self, me: str, mine: dict[str, dict[str, Any]], user_id: str, key_id: str, obj: dict[str, Any],
        accepted: list[Signature],
    ) -> tuple[str, str] | None:
        """Check one uploaded object; add its valid signatures by ``me`` to ``accepted``;
        the (errcode, message) of a failure."""
        stored: dict[str, Any] | None
        if user_id == me:
            stored = await self.e2e.keys.device_key(me, key_id)
            signer_types = ["self_signing"]
            if stored is None:
                cross = {v.public_key_of(k): k for k in mine.values()}
                stored = cross.get(key_id)
                signer_types = []  # a cross-signing key of mine: signed by one of my devices
        else:
            found = await self.e2e.query(me, {user_id: []})
            stored = found["master_keys"].get(user_id)
            if stored is None or v.public_key_of(stored) != key_id:
                return "M_NOT_FOUND", "Unknown key"
            signer_types = ["user_signing"]
        if stored is None:
            return "M_NOT_FOUND", "Unknown key"
        if signed_bytes(obj) != signed_bytes(stored):
            return "M_INVALID_SIGNATURE", "The object is not the stored key"
        sigs = (obj.get("signatures") or {}).get(me) or {}
        good = 0
        for sig_key_id, sig in sigs.items():
            name = sig_key_id.split(":", 1)[1]
            public: str | None = None
            for t in signer_types:
                if t in mine and v.public_key_of(mine[t]) == name:
                    public = name
            if not signer_types:
                device = await self.e2e.keys.device_key(me, name)
                public = ((device or {}).get("keys") or {}).get(f"ed25519:{name}")
            if public is None or (isinstance(public, str) and (stored.get("signatures") or {}).get(me, {}).get(
                    sig_key_id) == sig):
                continue
            if not isinstance(public, str) or not verify(obj, me, sig_key_id, public):
                return "M_INVALID_SIGNATURE", f"Bad signature {sig_key_id}"
            accepted.append(Signature(user_id, key_id, me, sig_key_id, sig))
            good += 1
        if not good and not sigs:
            return "M_INVALID_SIGNATURE", "No signature by you"
        return None
