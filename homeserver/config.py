"""Typed configuration loaded from YAML.

Every key is a field of a frozen dataclass below; loading checks types, required keys and
unknown keys, and a problem is reported as a ConfigError naming the key (``database.engine:
must be one of sqlite, postgres``), never as a traceback. Relative paths are resolved
against the directory of the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from homeserver.config_media_remote import RemoteFetchConfig
from homeserver.config_presence import PresenceConfig as PresenceConfig
from homeserver.config_typed import ConfigError as ConfigError
from homeserver.config_typed import build_dataclass
from homeserver.events.identifiers import is_valid_server_name
from homeserver.events.versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from homeserver.util.durations import parse_duration
from homeserver.util.hostport import parse_nameserver


@dataclass(frozen=True, slots=True)
class ConnectionLimitsConfig:
    """Limits each listener applies to its connections (docs/security.md, "Listeners")."""

    # Connections open at once; past it a new one evicts the oldest idle or slow-sending
    # one, or is closed at once when all are busy with requests.
    max_connections: int = 1000
    # Seconds to receive the request line and headers (from connecting, or from the first
    # byte of a later request), the body (from the end of the headers), and idle seconds
    # allowed between two requests.
    header_timeout: float = 15.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    # Request line and headers together, in bytes (larger: 431).
    max_header_bytes: int = 32 * 1024


@dataclass(frozen=True, slots=True)
class ListenerConfig(ConnectionLimitsConfig):
    bind: str = "127.0.0.1"
    port: int = 8008


@dataclass(frozen=True, slots=True)
class FederationListenerConfig(ConnectionLimitsConfig):
    bind: str = "127.0.0.1"
    port: int = 8448
    # Serve TLS from the files below; false for plain HTTP behind a TLS-terminating proxy.
    tls: bool = True
    tls_certificate_path: str | None = None
    tls_private_key_path: str | None = None


@dataclass(frozen=True, slots=True)
class MetricsListenerConfig(ConnectionLimitsConfig):
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 9009
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class ListenersConfig:
    client: ListenerConfig = field(default_factory=ListenerConfig)
    federation: FederationListenerConfig = field(default_factory=FederationListenerConfig)
    metrics: MetricsListenerConfig = field(default_factory=MetricsListenerConfig)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    engine: str = "sqlite"
    path: str = "homeserver.db"
    dsn: str | None = None
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout: float = 10.0
    # SQLite only: "normal" (the WAL is synced at checkpoints: a process crash loses
    # nothing, a power loss or OS crash may lose the last seconds of commits) or "full"
    # (every commit is synced before whatever depends on it is acknowledged).
    sqlite_sync: str = "normal"


@dataclass(frozen=True, slots=True)
class KeyServerConfig:
    server_name: str
    # key ID -> unpadded base64 ed25519 public key; when empty the notary's own keys are
    # fetched directly from it.
    verify_keys: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OldVerifyKeyConfig:
    key: str
    expired_ts: int


@dataclass(frozen=True, slots=True)
class FederationConfig:
    extra_ca_file: str | None = None
    verify_tls: bool = True
    hosts: dict[str, str] = field(default_factory=dict)
    key_servers: list[KeyServerConfig] = field(default_factory=list)
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    key_fetch_timeout: float = 10.0
    max_connections: int = 100
    max_connections_per_host: int = 4
    # Nameserver for SRV look-ups in server discovery, host[:port]; None: /etc/resolv.conf.
    dns_server: str | None = None
    # Outbound IP-range policy (net/addresses.py), checked on the address every outbound
    # socket connects to: CIDRs allowed although in the built-in denied ranges (loopback,
    # private, link-local, CGNAT, multicast, ULA, ...), and CIDRs always denied.
    ip_range_allowlist: list[str] = field(default_factory=list)
    ip_range_denylist: list[str] = field(default_factory=list)
    # Key fetches' own connection pool (total, per remote host), apart from the one above.
    key_fetch_max_connections: int = 20
    key_fetch_max_connections_per_host: int = 2

    def __post_init__(self) -> None:
        for name in ("ip_range_allowlist", "ip_range_denylist"):
            for i, text in enumerate(getattr(self, name)):
                try:
                    ipaddress.ip_network(str(text).strip(), strict=False)
                except ValueError:
                    raise ConfigError(f"federation.{name}[{i}]: {text!r} is not an IP address or CIDR range") from None
        for name in ("key_fetch_max_connections", "key_fetch_max_connections_per_host"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"federation.{name}: must be positive")


@dataclass(frozen=True, slots=True)
class InboundConfig:
    # Drop PDUs whose sender's server is not the transaction's origin (except m.room.member
    # join and invite events), as Synapse 0.18.7 did. Off: process them like any other.
    strict_origin: bool = False
    max_transaction_bytes: int = 4 * 1024 * 1024
    worker_batch_size: int = 100
    room_concurrency: int = 8
    max_queued_per_room: int = 50
    missing_events_limit: int = 50
    missing_events_max_depth: int = 100
    missing_events_timeout: float = 20.0
    missing_auth_events_limit: int = 100
    fetch_backoff_seconds: float = 60.0
    transaction_retention_seconds: int = 24 * 3600
    duplicate_warning_threshold: int = 100
    cache_size: int = 10_000
    # Helper processes for the state-free checks (format, signatures, hashes) of large
    # batches; 0: every check runs in the server process.
    check_processes: int = 1


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    # Backoff of a failing destination: the first retry waits backoff_initial_seconds,
    # each further failure multiplies the wait by backoff_factor up to
    # backoff_ceiling_seconds; each wait is randomised by +/- backoff_jitter (a fraction).
    backoff_initial_seconds: float = 10.0
    backoff_factor: float = 2.0
    backoff_ceiling_seconds: float = 3600.0
    backoff_jitter: float = 0.2
    # A destination failing for longer than this stops being tried; its queue shrinks to
    # our newest event of each room until it contacts us again.
    dead_after_days: float = 7.0
    # A recovering destination gets its whole queue replayed, in order, while the queue
    # holds at most catch_up_max_pdus PDUs, the oldest queued at most catch_up_max_age_hours
    # ago; past either bound it is caught up instead (our newest event of each room, the
    # receiver fetches the gap). catch_up_threshold: the older name of catch_up_max_pdus
    # (generated configs held 100); when set it overrides catch_up_max_pdus.
    catch_up_max_pdus: int = 10_000
    catch_up_max_age_hours: float = 24.0
    catch_up_threshold: int | None = None
    max_pdus_per_transaction: int = 50
    max_edus_per_transaction: int = 100
    # EDUs kept per destination while it is unreachable (oldest dropped past this).
    max_queued_edus: int = 1000
    # Total time allowed for one PUT /send (connect timeout from federation.connect_timeout).
    send_timeout: float = 30.0
    # Seconds between sweeps that pick up queues whose wake-up was missed.
    sweep_interval: float = 30.0


    @property
    def replay_max_pdus(self) -> int:
        """The PDU bound in force (the deprecated catch_up_threshold wins when set)."""
        return self.catch_up_max_pdus if self.catch_up_threshold is None else self.catch_up_threshold


@dataclass(frozen=True, slots=True)
class RoomsConfig:
    # Version of rooms created without one, and capabilities' m.room_versions.default.
    default_room_version: str = DEFAULT_ROOM_VERSION.identifier

    def __post_init__(self) -> None:
        if self.default_room_version not in KNOWN_ROOM_VERSIONS:
            raise ConfigError(f"rooms.default_room_version: must be one of {', '.join(KNOWN_ROOM_VERSIONS)}")


@dataclass(frozen=True, slots=True)
class WellKnownConfig:
    # Delegation: served as /.well-known/matrix/server ({"m.server": server}, host[:port]
    # of our federation listener) on both listeners; null: 404 there.
    server: str | None = None

    def __post_init__(self) -> None:
        if self.server is not None and not is_valid_server_name(self.server):
            raise ConfigError(f"well_known.server: {self.server!r} is not a valid server name (host[:port])")


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    # Token bucket per client IP: ``burst_count`` requests at once, refilled at
    # ``per_second`` requests per second.
    per_second: float = 0.5
    burst_count: int = 10


@dataclass(frozen=True, slots=True)
class ClientConfig:
    # Off by default; on needs registration_token, registration_requires_token or
    # enable_registration_without_verification (database tokens alone never turn it on).
    enable_registration: bool = False
    # When set, registering needs the token stage with this token (or a database token).
    registration_token: str | None = None
    # The token stage with a database token (``homeserver registration-token create``).
    registration_requires_token: bool = False
    # Base URL advertised in /.well-known/matrix/client (default: from the request).
    public_baseurl: str | None = None
    max_body_bytes: int = 1024 * 1024
    # Longest /sync long-poll honoured, in milliseconds.
    max_sync_timeout_ms: int = 60_000
    login_rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    register_rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    # Open registration (the m.login.dummy stage only, anyone may register): must be said
    # explicitly when enable_registration is true and no registration_token is set.
    enable_registration_without_verification: bool = False
    # Shortest password accepted at registration and password change, in characters.
    password_min_length: int = 8
    # Failed password logins per account, from any address (token bucket).
    failed_login_rate_limit: RateLimitConfig = field(
        default_factory=lambda: RateLimitConfig(per_second=0.05, burst_count=5)
    )
    # Reverse proxies (IP addresses or CIDR ranges) whose X-Forwarded-For is believed.
    trusted_proxies: list[str] = field(default_factory=list)
    # scrypt cost of password hashes: N = 2**password_scrypt_log_n (r=8, p=1); 17 = 128 MiB.
    # Lower values are for tests only.
    password_scrypt_log_n: int = 17


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    # History from before we joined a room, fetched with GET /backfill when a client pages
    # /messages back past the oldest event we hold: events asked for per request, servers
    # of the room tried per attempt, and the seconds one /messages request may spend on it.
    limit: int = 100
    max_servers: int = 3
    timeout: float = 10.0
    # After an attempt that brought nothing (peers down, nothing more), the same room is
    # not tried again for this many seconds.
    retry_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class InvitesConfig:
    # Stripped state another server sends with an invite (PUT /invite) for one of our
    # users: at most this many entries and bytes (compact JSON of what is kept: type,
    # state_key, content, sender); over either, 400 M_TOO_LARGE and nothing is stored. A
    # resident's knock_room_state is cut to the same caps.
    max_state_events: int = 50
    max_state_bytes: int = 64 * 1024
    # Invites from one remote server held pending (neither accepted nor rejected): over
    # all our users, and for one user; past either, 403 M_FORBIDDEN and nothing is stored.
    max_pending_per_server: int = 1000
    max_pending_per_server_per_user: int = 50


@dataclass(frozen=True, slots=True)
class FederationLimitsConfig:
    # What an inbound federation request may cost before its X-Matrix signature is verified,
    # and what naming a new server may cost (docs/security.md). Largest body of send_join,
    # send_leave, send_knock (one event) and get_missing_events, of invite (the event and its
    # stripped state), and of every other endpoint but /send (inbound.max_transaction_bytes).
    event_body_bytes: int = 256 * 1024
    invite_body_bytes: int = 1024 * 1024
    default_body_bytes: int = 64 * 1024
    # Bytes of request bodies read and checked at once before their signature is verified;
    # a request that cannot get its share within unverified_body_wait_seconds gets 429.
    unverified_body_bytes: int = 16 * 1024 * 1024
    unverified_body_wait_seconds: float = 10.0
    # Key fetches running at once (one per server at most), and servers whose last fetch
    # time (for the backoff after a failure) is remembered.
    max_concurrent_key_fetches: int = 32
    key_fetch_memory: int = 10_000
    # "key fetch failed" warnings written per minute at most (the rest counted in a summary).
    key_fetch_warnings_per_minute: int = 10
    # Server names used as metric labels at most (others are counted as "(other)").
    max_labelled_peers: int = 1000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ConfigError(f"federation_limits.{f.name}: must be positive")


@dataclass(frozen=True, slots=True)
class ThumbnailSizeConfig:
    width: int
    height: int
    method: str  # crop (exactly width x height) or scale (fits inside, aspect kept)


def _default_thumbnail_sizes() -> list[ThumbnailSizeConfig]:
    sizes = ((32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale"))
    return [ThumbnailSizeConfig(w, h, m) for w, h, m in sizes]


@dataclass(frozen=True, slots=True)
class UrlPreviewConfig:
    """URL previews (media/preview.py): off by default. Fetches go through the outbound
    client and its IP-range policy (federation.ip_range_allowlist / _denylist)."""

    enabled: bool = False
    # Seconds one preview may take in all (redirects and image included), bytes of a page
    # read at most, previews made at once, and seconds an answer is cached.
    timeout: float = 10.0
    max_page_bytes: int = 1024 * 1024
    max_concurrent: int = 4
    cache_seconds: int = 3600

    def __post_init__(self) -> None:
        for name in ("timeout", "max_page_bytes", "max_concurrent", "cache_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"media.url_preview.{name}: must be positive")


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The media repository (docs/media.md)."""

    # Largest upload (and largest remote media cached), in bytes: m.upload.size.
    max_upload_size: int = 50 * 1024 * 1024
    # Where the files live (content-addressed); null: <data_dir>/media.
    store_path: str | None = None
    # The thumbnail sizes made (a request gets the closest one).
    thumbnail_sizes: list[ThumbnailSizeConfig] = field(default_factory=_default_thumbnail_sizes)
    # Images with more pixels than this are not thumbnailed (decompression bombs).
    max_thumbnail_source_pixels: int = 32_000_000
    # Remote media not accessed for this long is purged by `homeserver media purge-remote`
    # when no --before is given: <n>d, <n>h, <n>m or <n>s.
    remote_retention: str = "90d"
    # The legacy unauthenticated /_matrix/media/v3/download and /thumbnail (off: 404, as
    # Synapse's frozen legacy media; clients use the authenticated /client/v1/media).
    legacy_unauthenticated: bool = False
    # URL previews (GET /_matrix/client/v1/media/preview_url); off: 404 M_UNRECOGNIZED.
    url_preview: UrlPreviewConfig = field(default_factory=UrlPreviewConfig)
    # Uploads per user (token bucket), and asynchronous uploads (POST /media/v1/create)
    # waiting for their bytes per user, which expire after unused_expiry_seconds.
    upload_rate_limit: RateLimitConfig = field(default_factory=lambda: RateLimitConfig(per_second=1.0, burst_count=10))
    max_pending_uploads: int = 10
    unused_expiry_seconds: int = 24 * 3600
    remote_fetch: RemoteFetchConfig = field(default_factory=RemoteFetchConfig)  # config_media_remote.py
    # An upload's body may take body_timeout + its size at this rate, bytes/s (slow_bodies.py); 0: off.
    min_upload_rate: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_upload_size", "max_thumbnail_source_pixels", "max_pending_uploads", "unused_expiry_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"media.{name}: must be positive")
        if self.upload_rate_limit.per_second <= 0 or self.upload_rate_limit.burst_count <= 0:
            raise ConfigError("media.upload_rate_limit: per_second and burst_count must be positive")
        for i, size in enumerate(self.thumbnail_sizes):
            if size.method not in ("crop", "scale"):
                raise ConfigError(f"media.thumbnail_sizes[{i}].method: must be crop or scale")
            if not (1 <= size.width <= 4096 and 1 <= size.height <= 4096):
                raise ConfigError(f"media.thumbnail_sizes[{i}]: width and height must be between 1 and 4096")
        try:
            parse_duration(self.remote_retention)
        except ValueError:
            raise ConfigError("media.remote_retention: must be <n>d, <n>h, <n>m or <n>s") from None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True, slots=True)
class Config:
    server_name: str
    signing_key_path: str
    data_dir: str = "."
    key_validity_period_ms: int = 24 * 3600 * 1000
    old_verify_keys: dict[str, OldVerifyKeyConfig] = field(default_factory=dict)
    listeners: ListenersConfig = field(default_factory=ListenersConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    invites: InvitesConfig = field(default_factory=InvitesConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    federation_limits: FederationLimitsConfig = field(default_factory=FederationLimitsConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    well_known: WellKnownConfig = field(default_factory=WellKnownConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)


_PATH_KEYS = {
    "signing_key_path",
    "data_dir",
    "listeners.federation.tls_certificate_path",
    "listeners.federation.tls_private_key_path",
    "database.path",
    "federation.extra_ca_file",
    "media.store_path",
}

def _validate(config: Config) -> None:
    if not is_valid_server_name(config.server_name):
        raise ConfigError(f"server_name: {config.server_name!r} is not a valid server name")
    if config.database.engine not in ("sqlite", "postgres"):
        raise ConfigError("database.engine: must be one of sqlite, postgres")
    if config.database.engine == "postgres" and not config.database.dsn:
        raise ConfigError("database.dsn: required when database.engine is postgres")
    if config.database.pool_min_size < 1 or config.database.pool_max_size < config.database.pool_min_size:
        raise ConfigError("database.pool_max_size: must be >= pool_min_size >= 1")
    if config.database.sqlite_sync not in ("normal", "full"):
        raise ConfigError("database.sqlite_sync: must be one of normal, full")
    fed = config.listeners.federation
    if fed.tls and not (fed.tls_certificate_path and fed.tls_private_key_path):
        raise ConfigError(
            "listeners.federation.tls_certificate_path: required (with tls_private_key_path) "
            "when listeners.federation.tls is true"
        )
    for name, limits in (("listeners.client", config.listeners.client), ("listeners.federation", fed),
                         ("listeners.metrics", config.listeners.metrics)):
        if not 0 <= limits.port <= 65535:
            raise ConfigError(f"{name}.port: must be between 0 and 65535")
        for key_name, number in (
            ("max_connections", limits.max_connections),
            ("header_timeout", limits.header_timeout),
            ("body_timeout", limits.body_timeout),
            ("keepalive_timeout", limits.keepalive_timeout),
        ):
            if number <= 0:
                raise ConfigError(f"{name}.{key_name}: must be positive")
        if limits.max_header_bytes < 1024:
            raise ConfigError(f"{name}.max_header_bytes: must be at least 1024")
    if config.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("logging.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if config.logging.format not in ("json", "text"):
        raise ConfigError("logging.format: must be one of json, text")
    for server in config.federation.hosts:
        if not is_valid_server_name(server):
            raise ConfigError(f"federation.hosts.{server}: not a valid server name")
    for i, ks in enumerate(config.federation.key_servers):
        if not is_valid_server_name(ks.server_name):
            raise ConfigError(f"federation.key_servers[{i}].server_name: not a valid server name")
    if config.federation.dns_server is not None:
        try:
            parse_nameserver(config.federation.dns_server)
        except ValueError:
            raise ConfigError("federation.dns_server: must be host[:port] (or null)") from None
    for key_name, value in (
        ("federation.connect_timeout", config.federation.connect_timeout),
        ("federation.request_timeout", config.federation.request_timeout),
        ("federation.key_fetch_timeout", config.federation.key_fetch_timeout),
    ):
        if value <= 0:
            raise ConfigError(f"{key_name}: must be positive")
    inbound = config.inbound
    for key_name, number in (
        ("inbound.max_transaction_bytes", inbound.max_transaction_bytes),
        ("inbound.worker_batch_size", inbound.worker_batch_size),
        ("inbound.room_concurrency", inbound.room_concurrency),
        ("inbound.max_queued_per_room", inbound.max_queued_per_room),
        ("inbound.missing_events_limit", inbound.missing_events_limit),
        ("inbound.missing_events_max_depth", inbound.missing_events_max_depth),
        ("inbound.missing_events_timeout", inbound.missing_events_timeout),
        ("inbound.missing_auth_events_limit", inbound.missing_auth_events_limit),
        ("inbound.transaction_retention_seconds", inbound.transaction_retention_seconds),
        ("inbound.duplicate_warning_threshold", inbound.duplicate_warning_threshold),
        ("inbound.cache_size", inbound.cache_size),
    ):
        if number <= 0:
            raise ConfigError(f"{key_name}: must be positive")
    if inbound.fetch_backoff_seconds < 0:
        raise ConfigError("inbound.fetch_backoff_seconds: must not be negative")
    if not 0 <= inbound.check_processes <= 64:
        raise ConfigError("inbound.check_processes: must be between 0 and 64")
    out = config.outbound
    for key_name, number in (
        ("outbound.backoff_initial_seconds", out.backoff_initial_seconds),
        ("outbound.backoff_ceiling_seconds", out.backoff_ceiling_seconds),
        ("outbound.dead_after_days", out.dead_after_days),
        ("outbound.catch_up_max_pdus", out.catch_up_max_pdus),
        ("outbound.catch_up_max_age_hours", out.catch_up_max_age_hours),
        ("outbound.catch_up_threshold", 1 if out.catch_up_threshold is None else out.catch_up_threshold),
        ("outbound.max_queued_edus", out.max_queued_edus),
        ("outbound.send_timeout", out.send_timeout),
        ("outbound.sweep_interval", out.sweep_interval),
    ):
        if number <= 0:
            raise ConfigError(f"{key_name}: must be positive")
    if out.backoff_factor < 1:
        raise ConfigError("outbound.backoff_factor: must be at least 1")
    if not 0 <= out.backoff_jitter < 1:
        raise ConfigError("outbound.backoff_jitter: must be between 0 and 1")
    if not 1 <= out.max_pdus_per_transaction <= 50:
        raise ConfigError("outbound.max_pdus_per_transaction: must be between 1 and 50 (spec limit)")
    if not 1 <= out.max_edus_per_transaction <= 100:
        raise ConfigError("outbound.max_edus_per_transaction: must be between 1 and 100 (spec limit)")
    bf = config.backfill
    if not 1 <= bf.limit <= 1000:
        raise ConfigError("backfill.limit: must be between 1 and 1000")
    if bf.max_servers < 0:
        raise ConfigError("backfill.max_servers: must not be negative (0 turns backfill off)")
    if bf.timeout <= 0:
        raise ConfigError("backfill.timeout: must be positive")
    if bf.retry_seconds < 0:
        raise ConfigError("backfill.retry_seconds: must not be negative")
    cl = config.client
    for key_name, number in (
        ("client.max_body_bytes", cl.max_body_bytes),
        ("client.max_sync_timeout_ms", cl.max_sync_timeout_ms),
        ("client.login_rate_limit.per_second", cl.login_rate_limit.per_second),
        ("client.login_rate_limit.burst_count", cl.login_rate_limit.burst_count),
        ("client.register_rate_limit.per_second", cl.register_rate_limit.per_second),
        ("client.register_rate_limit.burst_count", cl.register_rate_limit.burst_count),
    ):
        if number <= 0:
            raise ConfigError(f"{key_name}: must be positive")
    if cl.registration_token is not None and not cl.registration_token:
        raise ConfigError("client.registration_token: must not be empty (null disables it)")
    _validate_client_security(cl)
    if config.key_validity_period_ms <= 0:
        raise ConfigError("key_validity_period_ms: must be positive")


def _validate_client_security(cl: ClientConfig) -> None:
    """Registration, passwords, login limits and proxies (docs/security.md)."""
    if (
        cl.enable_registration and not cl.registration_token and not cl.registration_requires_token
        and not cl.enable_registration_without_verification
    ):
        raise ConfigError(
            "client.enable_registration: true needs client.registration_token or "
            "client.registration_requires_token: true (tokens made with `homeserver "
            "registration-token create`), or client.enable_registration_without_verification: "
            "true to let anyone register without any verification"
        )
    if not 1 <= cl.password_min_length <= 512:
        raise ConfigError("client.password_min_length: must be between 1 and 512")
    for key_name, number in (
        ("client.failed_login_rate_limit.per_second", cl.failed_login_rate_limit.per_second),
        ("client.failed_login_rate_limit.burst_count", cl.failed_login_rate_limit.burst_count),
    ):
        if number <= 0:
            raise ConfigError(f"{key_name}: must be positive")
    for i, proxy in enumerate(cl.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"client.trusted_proxies[{i}]: {proxy!r} is not an IP address or CIDR range") from None
    if not 10 <= cl.password_scrypt_log_n <= 20:
        raise ConfigError("client.password_scrypt_log_n: must be between 10 and 20 (17 or more outside tests)")


def parse_config(data: Any, base_dir: Path) -> Config:
    """Build a Config from parsed YAML; raises ConfigError naming the offending key."""
    config: Config = build_dataclass(Config, data, "", base_dir, _PATH_KEYS)
    _validate(config)
    return config


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the YAML config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}") from None
    return parse_config(data, p.resolve().parent)
