"""Accounts: /versions, /.well-known/matrix/client, registration (user-interactive auth
with the m.login.dummy or m.login.registration_token stage), password login, logout,
whoami, password change and account deactivation (user-interactive auth with the
current password).

Guarantees: registration is off unless the config turns it on (with a token, or open on
explicit request; tokens in the database never turn it on by themselves); the token stage
takes the config's token or a valid database token, whose use is counted in the
transaction that creates the account (a token with uses left for one more account
registers exactly one, however many registrations race for it); registration and login
are rate-limited per client IP (the address
behind a trusted proxy, ``client.trusted_proxies``), and failed logins per account too
(from any address); new passwords have a minimum length (400 M_WEAK_PASSWORD); a user ID
is registered at most once (M_USER_IN_USE); a wrong password and an unknown user give
the same M_FORBIDDEN; logout invalidates the device's access tokens at once.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from homeserver.client_api.common import (
    MAX_DEVICE_DISPLAY_NAME,
    MAX_ID_BYTES,
    Authenticator,
    Requester,
    client_ip,
    parse_networks,
    require_limited_str,
    require_str,
)
from homeserver.client_api.ratelimit import RateLimiter
from homeserver.config import ClientConfig
from homeserver.e2e.service import E2eKeys
from homeserver.errors import MatrixError, forbidden
from homeserver.http import json_response, read_json_object
from homeserver.net.client import FederationRequestError
from homeserver.rooms.errors import RoomError
from homeserver.rooms.service import RoomService
from homeserver.storage.registration_tokens import (
    RegistrationTokenStore,
    TokenUnusableError,
    is_valid_token_text,
)
from homeserver.storage.users import SCRYPT_LOG_N, UserExistsError, UserStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

SPEC_VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
                 "v1.12"]
LOCALPART = re.compile(r"^[a-z0-9._=/+\-]+$")
MAX_USER_ID_BYTES = 255
MAX_PASSWORD_LENGTH = 512
UIA_SESSION_TTL = 600.0
UIA_MAX_SESSIONS = 10_000
DUMMY = "m.login.dummy"
TOKEN = "m.login.registration_token"
PASSWORD = "m.login.password"


@dataclass(slots=True)
class UiaSession:
    created: float
    completed: set[str] = field(default_factory=set)
    # A database registration token that passed the token stage: used when the account is made.
    registration_token: str | None = None


class UiaSessions:
    """User-interactive auth sessions: id -> (created, stages completed). Bounded, expiring."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        # Oldest first: pruning stops at the first session young enough (not an LRU: a
        # session read does not become younger).
        self._sessions: OrderedDict[str, UiaSession] = OrderedDict()

    def new(self) -> str:
        self._prune()
        sid = secrets.token_urlsafe(16)
        self._sessions[sid] = UiaSession(self._clock.monotonic())
        return sid

    def get(self, sid: str | None) -> UiaSession | None:
        self._prune()
        return None if sid is None else self._sessions.get(sid)

    def completed(self, sid: str | None) -> set[str] | None:
        hit = self.get(sid)
        return None if hit is None else hit.completed

    def drop(self, sid: str | None) -> None:
        if sid is not None:
            self._sessions.pop(sid, None)

    def _prune(self) -> None:
        now = self._clock.monotonic()
        while self._sessions:
            sid, session = next(iter(self._sessions.items()))
            if now - session.created < UIA_SESSION_TTL and len(self._sessions) < UIA_MAX_SESSIONS:
                break
            self._sessions.pop(sid)


def check_new_password(password: str, min_length: int) -> None:
    """400 M_WEAK_PASSWORD for a password shorter than ``client.password_min_length``."""
    if len(password) < min_length:
        raise MatrixError(400, "M_WEAK_PASSWORD", f"Password must be at least {min_length} characters long")


class AccountsAPI:
    def __init__(
        self, server_name: str, config: ClientConfig, users: UserStore, auth: Authenticator,
        rooms: RoomService, *, tokens: RegistrationTokenStore | None = None, clock: Clock = SYSTEM_CLOCK,
        e2e: E2eKeys | None = None,
    ) -> None:
        self.server_name = server_name
        self.config = config
        self.users = users
        self.tokens = tokens if tokens is not None else RegistrationTokenStore(users.db)
        self.e2e = e2e  # logging out deletes the device: its keys go too
        self.auth = auth
        self.rooms = rooms
        self.login_limiter = RateLimiter(config.login_rate_limit, clock=clock)
        self.register_limiter = RateLimiter(config.register_rate_limit, clock=clock)
        # Failed password logins per account, whatever the address: a distributed guesser
        # gets burst_count tries, then per_second.
        self.failed_login_limiter = RateLimiter(config.failed_login_rate_limit, max_keys=20_000, clock=clock)
        self._trusted_proxies = parse_networks(config.trusted_proxies)
        self._sessions = UiaSessions(clock)
        if config.password_scrypt_log_n < SCRYPT_LOG_N:
            log.warning("client.password_scrypt_log_n is below %d: password hashes weaker than current "
                        "guidance (for tests only)", SCRYPT_LOG_N)
        self.password = PasswordStage(users, RateLimiter(config.login_rate_limit, clock=clock), clock=clock)

    def _client_ip(self, request: web.Request) -> str:
        return client_ip(request, self._trusted_proxies)

    def routes(self) -> list[web.RouteDef]:
        p = "/_matrix/client/v3"
        return [
            web.get("/_matrix/client/versions", self.versions),
            web.get("/.well-known/matrix/client", self.well_known),
            web.post(f"{p}/register", self.register),
            web.get(f"{p}/register/available", self.register_available),
            web.get(f"/_matrix/client/v1/register/{TOKEN}/validity", self.token_validity),
            web.get(f"{p}/register/{TOKEN}/validity", self.token_validity),  # before v1 (kept)
            web.get(f"{p}/login", self.login_flows),
            web.post(f"{p}/login", self.login),
            web.post(f"{p}/logout", self.logout),
            web.post(f"{p}/logout/all", self.logout_all),
            web.get(f"{p}/account/whoami", self.whoami),
            web.post(f"{p}/account/password", self.change_password),
            web.post(f"{p}/account/deactivate", self.deactivate),
        ]

    # ------------------------------------------------------------------ discovery

    async def versions(self, request: web.Request) -> web.Response:
        return json_response({"versions": SPEC_VERSIONS, "unstable_features": {}})

    async def well_known(self, request: web.Request) -> web.Response:
        base = self.config.public_baseurl or f"{request.scheme}://{request.host}"
        return json_response({"m.homeserver": {"base_url": base.rstrip("/")}})

    # ------------------------------------------------------------------ registration

    def _user_id_for(self, localpart: str) -> str:
        if not LOCALPART.match(localpart):
            raise MatrixError(400, "M_INVALID_USERNAME", "User ID may only contain a-z, 0-9, and ._=-/+")
        user_id = f"@{localpart}:{self.server_name}"
        if len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
            raise MatrixError(400, "M_INVALID_USERNAME", "User ID is too long")
        return user_id

    def _stages(self) -> list[str]:
        # With a token, the token stage and then the dummy one (as Synapse, which
        # matrix-nio's token registration expects).
        return [TOKEN, DUMMY] if self._token_required() else [DUMMY]

    def _token_required(self) -> bool:
        return bool(self.config.registration_token) or self.config.registration_requires_token

    def _flows(self) -> list[dict[str, Any]]:
        return [{"stages": self._stages()}]

    async def register(self, request: web.Request) -> web.Response:
        # 1. Rate limit, then refuse what this server does not offer.
        self.register_limiter.enforce(self._client_ip(request))
        if request.query.get("kind", "user") == "guest":
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled")
        if request.query.get("kind", "user") != "user":
            raise MatrixError(400, "M_INVALID_PARAM", "kind must be user or guest")
        if not self.config.enable_registration:
            raise forbidden("Registration is disabled")
        body = await read_json_object(request, self.config.max_body_bytes)
        # 2. Check the username before any auth stage, as the spec's flow does.
        username = require_str(body, "username", optional=True)
        if username is None:
            localpart = "u" + secrets.token_hex(6)
        else:
            localpart = username[1:].split(":", 1)[0] if username.startswith("@") else username
            if username.startswith("@") and not username.endswith(":" + self.server_name):
                raise MatrixError(400, "M_INVALID_USERNAME", "User ID is not on this server")
        user_id = self._user_id_for(localpart)
        if await self.users.user_exists(user_id):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken")
        password = require_str(body, "password")
        assert password is not None
        if len(password) > MAX_PASSWORD_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", "Password too long")
        check_new_password(password, self.config.password_min_length)
        device_id = require_limited_str(body, "device_id", MAX_ID_BYTES, optional=True)
        display = require_limited_str(body, "initial_device_display_name", MAX_DEVICE_DISPLAY_NAME, optional=True,
                                      in_bytes=False)
        inhibit = body.get("inhibit_login") is True
        # 3. User-interactive auth: the stages this server requires must be complete.
        db_token = await self._check_uia(body.get("auth"))
        # 4. Create the account (the unique key decides a race; a database token's use is
        # counted in the same transaction) and log it in.
        try:
            await self.users.create_user(user_id, password, localpart, registration_token=db_token)
        except UserExistsError:
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken") from None
        except TokenUnusableError:
            raise self._uia_challenge(
                self._sessions.new(), set(), MatrixError(401, "M_FORBIDDEN", "Invalid registration token")
            ) from None
        log.info("user registered", extra={"user_id": user_id})
        if inhibit:
            return json_response({"user_id": user_id})
        device_id, token = await self.users.create_session(user_id, device_id, display)
        return json_response({"user_id": user_id, "access_token": token, "device_id": device_id})

    async def _check_uia(self, auth: Any) -> str | None:
        """Return when every stage of the flow is complete (with the database registration
        token to use, if the token stage took one); otherwise raise the 401."""
        stages = self._stages()
        if auth is None:
            raise self._uia_challenge(self._sessions.new(), set())
        if not isinstance(auth, dict):
            raise MatrixError(400, "M_BAD_JSON", "auth must be an object")
        sid = auth.get("session") if isinstance(auth.get("session"), str) else None
        if sid is None:
            sid = self._sessions.new()
        session = self._sessions.get(sid)
        if session is None:
            raise MatrixError(400, "M_UNKNOWN", "Unknown or expired session")
        done = session.completed
        stage = auth.get("type")
        if stage is None:
            raise self._uia_challenge(sid, done)
        if stage not in stages:
            raise self._uia_challenge(
                sid, done, MatrixError(401, "M_UNRECOGNIZED", f"Unsupported auth stage {stage!r}")
            )
        if stage == TOKEN:
            # The spec names the field "token"; older matrix-nio sends "registration_token".
            token = auth.get("token", auth.get("registration_token"))
            if not isinstance(token, str) or not await self._token_valid(token):
                raise self._uia_challenge(sid, done, MatrixError(401, "M_FORBIDDEN", "Invalid registration token"))
            session.registration_token = None if self._is_config_token(token) else token
        done.add(stage)
        if all(s in done for s in stages):
            self._sessions.drop(sid)
            return session.registration_token
        raise self._uia_challenge(sid, done)

    def _is_config_token(self, token: str) -> bool:
        expected = self.config.registration_token
        return expected is not None and hmac.compare_digest(token.encode(), expected.encode())

    async def _token_valid(self, token: str) -> bool:
        """The config's token, or a database token not expired and with uses left."""
        if self._is_config_token(token):
            return True
        return is_valid_token_text(token) and await self.tokens.is_valid(token)

    def _uia_challenge(self, sid: str, done: set[str], err: MatrixError | None = None) -> MatrixError:
        extra: dict[str, Any] = {"flows": self._flows(), "params": {}, "session": sid, "completed": sorted(done)}
        if err is None:
            # The first response of user-interactive auth carries no errcode.
            return UiaChallenge(extra)
        return MatrixError(401, err.errcode, err.message, **extra)

    async def register_available(self, request: web.Request) -> web.Response:
        self.register_limiter.enforce(self._client_ip(request))
        username = request.query.get("username")
        if not username:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing username")
        user_id = self._user_id_for(username)
        if await self.users.user_exists(user_id):
            raise MatrixError(400, "M_USER_IN_USE", "User ID already taken")
        return json_response({"available": True})

    async def token_validity(self, request: web.Request) -> web.Response:
        self.register_limiter.enforce(self._client_ip(request))
        token = request.query.get("token")
        if token is None:
            raise MatrixError(400, "M_MISSING_PARAM", "Missing token")
        if not self.config.enable_registration:
            raise forbidden("Registration is disabled")
        return json_response({"valid": await self._token_valid(token)})

    # ------------------------------------------------------------------ login

    async def login_flows(self, request: web.Request) -> web.Response:
        return json_response({"flows": [{"type": PASSWORD}]})

    async def login(self, request: web.Request) -> web.Response:
        self.login_limiter.enforce(self._client_ip(request))
        body = await read_json_object(request, self.config.max_body_bytes)
        if body.get("type") != PASSWORD:
            raise MatrixError(400, "M_UNKNOWN", "Unsupported login type")
        identifier = body.get("identifier")
        if isinstance(identifier, dict):
            if identifier.get("type") != "m.id.user":
                raise MatrixError(400, "M_UNKNOWN", "Only m.id.user identifiers are supported")
            user = identifier.get("user")
        else:
            user = body.get("user")  # the deprecated top-level field
        if not isinstance(user, str) or not user:
            raise MatrixError(400, "M_BAD_JSON", "Missing user identifier")
        password = require_str(body, "password")
        assert password is not None
        user_id = user if user.startswith("@") else f"@{user.lower()}:{self.server_name}"
        if len(user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
            raise forbidden("Invalid username or password")  # no such account can exist
        # The account's bucket pays for the attempt before the password is checked (so that
        # concurrent guesses cannot overrun it, and an empty bucket refuses even the right
        # password: no oracle); a right password gets its token back.
        self.failed_login_limiter.enforce(user_id)
        if len(password) > MAX_PASSWORD_LENGTH or not await self.users.check_password(user_id, password):
            raise forbidden("Invalid username or password")
        self.failed_login_limiter.refund(user_id)
        device_id = require_limited_str(body, "device_id", MAX_ID_BYTES, optional=True)
        display = require_limited_str(body, "initial_device_display_name", MAX_DEVICE_DISPLAY_NAME, optional=True,
                                      in_bytes=False)
        device_id, token = await self.users.create_session(user_id, device_id, display)
        return json_response({
            "user_id": user_id, "access_token": token, "device_id": device_id, "home_server": self.server_name,
        })

    async def logout(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        await self.users.delete_device(req.user_id, req.device_id)
        if self.e2e is not None and req.device_id is not None:
            await self.e2e.devices_deleted(req.user_id, [req.device_id])
        return json_response({})

    async def logout_all(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        devices = [d.device_id for d in await self.users.devices(req.user_id)]
        await self.users.delete_all_devices(req.user_id)
        if self.e2e is not None:
            await self.e2e.devices_deleted(req.user_id, devices)
        return json_response({})

    async def change_password(self, request: web.Request) -> web.Response:
        """``POST /account/password``: behind the current password (user-interactive auth);
        ``logout_devices`` (default true) logs out every other device of the user."""
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        new_password = body.get("new_password")
        if not isinstance(new_password, str):
            raise MatrixError(400, "M_BAD_JSON", "new_password must be a string")
        if len(new_password) > MAX_PASSWORD_LENGTH:
            raise MatrixError(400, "M_INVALID_PARAM", "Password too long")
        logout = body.get("logout_devices", True)
        if not isinstance(logout, bool):
            raise MatrixError(400, "M_BAD_JSON", "logout_devices must be a boolean")
        check_new_password(new_password, self.config.password_min_length)
        await self.password.check(req, body.get("auth"))
        await self.users.set_password(req.user_id, new_password, keep_device=req.device_id, logout_others=logout)
        log.info("password changed", extra={"user_id": req.user_id})
        return json_response({})

    async def deactivate(self, request: web.Request) -> web.Response:
        """``POST /account/deactivate``: behind the password (user-interactive auth). The
        account is closed first (no login, no token, empty profile), then the user leaves
        every room they are in, invited to or knocking on (best effort: a room whose leave
        fails is logged and skipped). No identity server: nothing to unbind."""
        req = await self.auth.requester(request)
        body = await read_json_object(request, self.config.max_body_bytes)
        if "erase" in body and not isinstance(body["erase"], bool):
            raise MatrixError(400, "M_BAD_JSON", "erase must be a boolean")
        await self.password.check(req, body.get("auth"))
        await self.users.deactivate(req.user_id)
        log.info("account deactivated", extra={"user_id": req.user_id})
        for room_id, membership in sorted((await self.rooms.rooms_for_user(req.user_id)).items()):
            if membership not in ("join", "invite", "knock"):
                continue
            try:
                await self.rooms.leave(req.user_id, room_id)
            except (RoomError, FederationRequestError) as e:
                log.info("deactivated user's leave failed", extra={"room_id": room_id, "error": str(e)})
            except Exception:
                # The account is closed already: the answer must still say so.
                log.exception("deactivated user's leave failed", extra={"room_id": room_id})
        return json_response({"id_server_unbind_result": "no-support"})

    async def whoami(self, request: web.Request) -> web.Response:
        req = await self.auth.requester(request)
        return json_response({"user_id": req.user_id, "device_id": req.device_id, "is_guest": False})


class UiaChallenge(MatrixError):
    """The 401 that opens user-interactive auth: flows, params and session, no errcode."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(401, "", "", **body)

    def to_json(self) -> dict[str, Any]:
        return dict(self.extra)


class PasswordStage:
    """User-interactive auth with one stage, the account's password, for requests an
    access token alone may not make (deleting devices, changing the password)."""

    def __init__(self, users: UserStore, limiter: RateLimiter, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.users = users
        self._sessions = UiaSessions(clock)
        # Password attempts per user (a stolen access token must not become a password oracle).
        self._limiter = limiter

    async def check(self, req: Requester, auth: Any) -> None:
        """Return once ``auth`` completes the stage; else raise the 401 that asks for it (or
        says what was wrong)."""
        if auth is None:
            raise self._challenge(self._sessions.new())
        if not isinstance(auth, dict):
            raise MatrixError(400, "M_BAD_JSON", "auth must be an object")
        sid = auth.get("session") if isinstance(auth.get("session"), str) else None
        if sid is None:
            sid = self._sessions.new()
        if self._sessions.completed(sid) is None:
            raise MatrixError(400, "M_UNKNOWN", "Unknown or expired session")
        if auth.get("type") != PASSWORD:
            raise self._challenge(sid, MatrixError(401, "M_UNRECOGNIZED", "The stage is m.login.password"))
        identifier = auth.get("identifier")
        user = identifier.get("user") if isinstance(identifier, dict) else auth.get("user")
        if isinstance(user, str) and user not in (req.user_id, req.user_id[1:].split(":", 1)[0]):
            raise self._challenge(sid, MatrixError(401, "M_FORBIDDEN", "Authenticate as yourself"))
        password = auth.get("password")
        self._limiter.enforce(req.user_id)
        if (
            not isinstance(password, str)
            or len(password) > MAX_PASSWORD_LENGTH
            or not await self.users.check_password(req.user_id, password)
        ):
            raise self._challenge(sid, MatrixError(401, "M_FORBIDDEN", "Invalid password"))
        self._sessions.drop(sid)

    @staticmethod
    def _challenge(sid: str, err: MatrixError | None = None) -> MatrixError:
        extra: dict[str, Any] = {"flows": [{"stages": [PASSWORD]}], "params": {}, "session": sid, "completed": []}
        if err is None:
            return UiaChallenge(extra)
        return MatrixError(401, err.errcode, err.message, **extra)
