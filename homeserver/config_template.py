"""The commented config file written by ``homeserver generate-config``.

``config.sample.yaml`` at the top of the repository is this template rendered with the
sample values (a test keeps them equal), so every key is documented in one place.
"""

from __future__ import annotations

from string import Template

TEMPLATE = Template("""\
# homeserver configuration. Relative paths are relative to this file's directory.

# The server name: the part after ':' in user IDs (@alice:$server_name). It cannot change
# once users and rooms exist. Grammar: hostname, IPv4 or [IPv6], with an optional :port.
server_name: "$server_name"

# Directory for the server's own files (database, keys, certificates).
data_dir: "$data_dir"

# The ed25519 signing key file ("ed25519 <version> <base64 seed>"), made by
# `homeserver generate-key` or `homeserver generate-config`.
signing_key_path: "$data_dir/signing.key"

# How long other servers may cache our published keys, in milliseconds.
key_validity_period_ms: 86400000

# Keys this server signed with in the past, still published as old_verify_keys so that
# old events keep verifying: key ID -> {key: base64 public key, expired_ts: ms}.
old_verify_keys: {}

listeners:
  # Client-server API (plain HTTP; put a TLS proxy in front for the internet).
  client:
    bind: "$bind"
    port: $client_port
    # Connection limits (each listener has its own; docs/security.md): connections open at
    # once (past it a new one evicts the oldest idle or slow one, or is closed at once when
    # all are busy with requests); seconds to receive the request line and headers (from
    # connecting), then the body; idle seconds allowed between two requests (behind a
    # reverse proxy: more than the proxy's upstream keep-alive); request line and headers
    # together, in bytes.
    max_connections: 1000
    header_timeout: 15.0
    body_timeout: 60.0
    keepalive_timeout: 75.0
    max_header_bytes: 32768
  # Server-server API. With tls: false it serves plain HTTP, for a server behind a
  # TLS-terminating reverse proxy.
  federation:
    bind: "$bind"
    port: $federation_port
    tls: true
    tls_certificate_path: "$data_dir/tls.crt"
    tls_private_key_path: "$data_dir/tls.key"
    # Connection limits, as for the client listener.
    max_connections: 1000
    header_timeout: 15.0
    body_timeout: 60.0
    keepalive_timeout: 75.0
    max_header_bytes: 32768
  # Prometheus metrics (GET /metrics), off the public federation port.
  metrics:
    enabled: true
    bind: "127.0.0.1"
    port: $metrics_port
    # Connection limits, as for the client listener.
    max_connections: 64
    header_timeout: 15.0
    body_timeout: 60.0
    keepalive_timeout: 75.0
    max_header_bytes: 32768

database:
  # sqlite (embedded, one file) or postgres.
  engine: "sqlite"
  # SQLite database file (engine: sqlite).
  path: "$data_dir/homeserver.db"
  # PostgreSQL DSN (engine: postgres), e.g. postgresql://user:pass@127.0.0.1:5432/homeserver
  dsn: null
  # PostgreSQL connection pool bounds.
  pool_min_size: 1
  pool_max_size: 10
  # Seconds to wait when connecting to the database.
  connect_timeout: 10.0
  # SQLite only. normal: the write-ahead log is synced at checkpoints, so a crash of the
  # server loses nothing, but a power loss or OS crash may lose the last seconds of
  # writes, /send transactions already acknowledged included. full: every commit is on
  # disk before whatever depends on it is acknowledged (a /send's 200, a client's event
  # ID): an fsync each time; on a 2-core VM, while the worker drains a backlog, a /send's
  # answer takes about 1.3 ms more on average and 3-4 ms more at p99. PostgreSQL follows
  # its own synchronous_commit (on by default: like full).
  sqlite_sync: "normal"

federation:
  # Extra CA certificates (PEM) trusted for outbound federation, besides the system store
  # (for testbeds with their own CA).
  extra_ca_file: null
  # Verify remote TLS certificates. Leave true outside throwaway tests.
  verify_tls: true
  # Server name -> base URL overrides for server discovery, e.g.
  # {"hs2.test": "https://127.0.0.1:18449"} (testbeds on one machine).
  hosts: {}
  # Notary servers asked for keys when a server cannot be reached directly:
  # [{server_name: "notary.example", verify_keys: {"ed25519:abc": "<base64>"}}]
  key_servers: []
  # Seconds to wait for a connection, and for a whole request, to another server.
  connect_timeout: 10.0
  request_timeout: 30.0
  # Seconds to wait for a remote server's keys.
  key_fetch_timeout: 10.0
  # Outbound connection pool: total, and per remote host.
  max_connections: 100
  max_connections_per_host: 4
  # Nameserver (host[:port]) asked for SRV records (_matrix-fed._tcp, _matrix._tcp) in
  # server discovery; null: the nameservers of /etc/resolv.conf.
  dns_server: null
  # Outbound IP-range policy, checked on the address each outbound connection goes to,
  # after DNS (federation, key fetches, .well-known and its redirects). Denied unless
  # allowlisted: loopback, private (RFC 1918), link-local, CGNAT (100.64.0.0/10),
  # multicast, reserved and documentation ranges, IPv6 unique-local, link-local and
  # site-local (full list: docs/security.md). Allowlist CIDRs to reach peers there, e.g.
  # ["127.0.0.0/8", "::1/128"] for a testbed on one machine, or ["10.0.0.0/8"] for a
  # private federation. The denylist wins over the allowlist.
  ip_range_allowlist: []
  ip_range_denylist: []
  # Key fetches' own connection pool (total, per remote host), so that fetches for
  # unreachable servers never take connections from the federation pool above.
  key_fetch_max_connections: 20
  key_fetch_max_connections_per_host: 2

inbound:
  # Inbound federation: /send answers from a durable inbox; a worker processes it.
  # Drop PDUs whose sender's server is not the transaction's origin (except m.room.member
  # join and invite events), as Synapse 0.18.7 did. Off by default: current Synapse sends
  # other servers' events when it catches a server up, and dropping them breaks rooms.
  strict_origin: false
  # Largest /send body accepted, in bytes (the spec allows 50 PDUs and 100 EDUs).
  max_transaction_bytes: 4194304
  # Inbox entries the worker holds in memory at most (claimed in batches, fairly per origin).
  worker_batch_size: 100
  # Rooms processed at the same time (events of one room are processed one at a time).
  room_concurrency: 8
  # Entries of one room held in memory at most, so one stuck room cannot fill the batch.
  max_queued_per_room: 50
  # Filling a gap in a room with POST /get_missing_events: at most this many events, this
  # many depth levels below the event, and this many seconds; then /state_ids is used.
  missing_events_limit: 50
  missing_events_max_depth: 100
  missing_events_timeout: 20.0
  # Missing auth events fetched for one event at most.
  missing_auth_events_limit: 100
  # After a fetch from a server failed, do not ask it again for this many seconds.
  fetch_backoff_seconds: 60.0
  # How long (origin, txnId) pairs are remembered for de-duplication, in seconds.
  transaction_retention_seconds: 86400
  # Warn (rate-limited, naming the peer) each time a peer has sent this many more PDUs
  # we already held.
  duplicate_warning_threshold: 100
  # Entries in each in-memory cache of the worker (events, states, room versions).
  cache_size: 10000
  # Helper processes that run the state-free checks (format, signatures, hashes) of large
  # batches, beside the server's event loop; 0: every check runs in the server process.
  check_processes: 1

outbound:
  # Outbound federation: only events created here leave, through one durable queue per
  # destination (one transaction in flight each, 50 PDUs and 100 EDUs at most).
  # Backoff of a failing destination: the first retry waits backoff_initial_seconds, each
  # further failure multiplies the wait by backoff_factor, up to backoff_ceiling_seconds;
  # every wait is randomised by +/- backoff_jitter (a fraction). A destination that sends
  # us any authenticated request is retried at once.
  backoff_initial_seconds: 10.0
  backoff_factor: 2.0
  backoff_ceiling_seconds: 3600.0
  backoff_jitter: 0.2
  # A destination failing for longer than this many days stops being tried, and its queue
  # shrinks to our newest event of each room, until it contacts us again.
  dead_after_days: 7.0
  # A destination that comes back after failing gets everything queued meanwhile, in
  # order (Synapse fetches only 10 missed events and shows the rest as a gap). Past
  # catch_up_max_pdus queued PDUs, or when the oldest was queued more than
  # catch_up_max_age_hours ago, it is caught up instead: only our newest event of each
  # room is sent, and the receiver fetches the gap with /get_missing_events.
  catch_up_max_pdus: 10000
  catch_up_max_age_hours: 24.0
  # The older name of catch_up_max_pdus (earlier generated configs held 100): when set,
  # it overrides catch_up_max_pdus. Leave it null.
  catch_up_threshold: null
  # Size of one transaction (the spec allows at most 50 PDUs and 100 EDUs).
  max_pdus_per_transaction: 50
  max_edus_per_transaction: 100
  # EDUs (typing, receipts, presence) kept per unreachable destination; oldest dropped.
  max_queued_edus: 1000
  # Seconds allowed for one PUT /send (connecting is bounded by federation.connect_timeout).
  send_timeout: 30.0
  # Seconds between sweeps that pick up queues whose wake-up was missed.
  sweep_interval: 30.0

rooms:
  # Version of rooms created without one (createRoom's room_version), also advertised as
  # the default in the client capabilities: any of "1" to "12".
  default_room_version: "12"

well_known:
  # Delegation: when other servers should reach this server somewhere else than its
  # server name says (e.g. server_name example.org, federation on matrix.example.org:443),
  # host[:port] served as GET /.well-known/matrix/server ({"m.server": ...}) on both
  # listeners; route https://<server_name>/.well-known/matrix/ to one of them. null: 404.
  # (/.well-known/matrix/client answers client.public_baseurl.)
  server: null

backfill:
  # History from before we joined a room: when a client pages /messages back past the
  # oldest event we hold, GET /backfill asks the room's servers (the creator's first, then
  # those with the most members) for up to `limit` earlier events; at most `max_servers`
  # servers (0: never backfill) and `timeout` seconds per /messages request. The events are
  # checked like any received event and stored as history (never sent to anyone).
  limit: 100
  max_servers: 3
  timeout: 10.0
  # Seconds before a room whose last attempt brought nothing is tried again.
  retry_seconds: 30.0

invites:
  # Invites other servers send for our users (PUT /invite). The stripped state that comes
  # with one: at most max_state_events entries and max_state_bytes bytes (compact JSON of
  # what is kept); over either, 400 M_TOO_LARGE and nothing is stored. A resident's
  # knock_room_state is cut to the same caps.
  max_state_events: 50
  max_state_bytes: 65536
  # Invites from one server held pending (not yet accepted or rejected), over all our
  # users and for one user; past either, 403 M_FORBIDDEN and nothing is stored.
  max_pending_per_server: 1000
  max_pending_per_server_per_user: 50

federation_limits:
  # What an inbound federation request may cost before its signature is verified, and
  # what naming a new server may cost (see docs/security.md). The Authorization header is
  # checked and the origin's key found before any body is read. Largest body, in bytes, of
  # send_join, send_leave, send_knock (one event) and get_missing_events, of invite (the
  # event and its stripped state), and of every other endpoint except /send (see
  # inbound.max_transaction_bytes); a larger declared body gets 413 M_TOO_LARGE at once.
  event_body_bytes: 262144
  invite_body_bytes: 1048576
  default_body_bytes: 65536
  # Bytes of request bodies read and checked at once before their signatures are verified
  # (all requests together); a request that cannot get its share within the wait gets 429.
  unverified_body_bytes: 16777216
  unverified_body_wait_seconds: 10.0
  # Key fetches running at once (never more than one per server), and how many servers'
  # last fetch times are remembered (a server is not asked again for 30 s).
  max_concurrent_key_fetches: 32
  key_fetch_memory: 10000
  # "key fetch failed" warnings written per minute at most; the rest are counted in one
  # summary line.
  key_fetch_warnings_per_minute: 10
  # Server names that may label metrics (servers that authenticated to us or that we send
  # to), at most; any other server is counted under "(other)".
  max_labelled_peers: 1000

client:
  # Client-server API. Registration is off by default; `homeserver user add` creates
  # accounts whatever this says. Turning registration on needs a registration_token (given
  # to the people you invite; clients ask for it at sign-up), registration_requires_token:
  # true, or enable_registration_without_verification: true (below), which lets anyone who
  # reaches this port create accounts. `generate-config --registration token|open` writes
  # the first or the last.
  enable_registration: $enable_registration
  # When set, registering needs the m.login.registration_token stage with this token (a
  # valid database token is accepted too).
  registration_token: $registration_token
  # Registering needs the m.login.registration_token stage with a token made by
  # `homeserver registration-token create` (limited uses, expiry; `list`, `revoke`) or the
  # registration_token above. Database tokens count only while enable_registration is
  # true: creating one never opens registration by itself.
  registration_requires_token: false
  # Base URL given to clients in /.well-known/matrix/client (null: from the request).
  public_baseurl: null
  # Largest client request body accepted, in bytes (larger: 413 M_TOO_LARGE).
  max_body_bytes: 1048576
  # Longest /sync long-poll honoured, in milliseconds.
  max_sync_timeout_ms: 60000
  # Per-IP token buckets for POST /login and POST /register: burst_count requests at
  # once, refilled at per_second; past that, 429 M_LIMIT_EXCEEDED with retry_after_ms.
  login_rate_limit:
    per_second: 0.5
    burst_count: 10
  register_rate_limit:
    per_second: 0.5
    burst_count: 10
  # Open registration: with enable_registration and no registration_token, anyone may
  # register with only the m.login.dummy stage (no e-mail, no captcha). Off: such a config
  # is refused at start-up.
  enable_registration_without_verification: $registration_without_verification
  # Shortest password accepted when registering or changing a password, in characters
  # (shorter, or empty: 400 M_WEAK_PASSWORD).
  password_min_length: 8
  # Failed password logins per account, from any address (a token bucket as above): once
  # empty, every login to that account, the right password included, gets 429
  # M_LIMIT_EXCEEDED until a token is back. A right password does not use a token.
  failed_login_rate_limit:
    per_second: 0.05
    burst_count: 5
  # Reverse proxies whose X-Forwarded-For header is believed: IP addresses or CIDR ranges,
  # e.g. ["127.0.0.1", "::1"] for a proxy on this machine. The client's address is then the
  # rightmost address of the header that is not a listed proxy. Behind a proxy, list it
  # here, or every client shares the proxy's address in the per-IP limits above.
  trusted_proxies: []
  # Cost of password hashes: scrypt with N = 2^password_scrypt_log_n, r = 8, p = 1. 17 uses
  # 128 MiB and about 0.2-0.5 s of CPU per hash; lower values are for tests only. Hashes
  # of a lower cost are upgraded at the user's next successful login.
  password_scrypt_log_n: 17

media:
  # The media repository (docs/media.md). Largest upload in bytes (m.upload.size), also
  # the largest remote media cached.
  max_upload_size: 52428800
  # Where the files live, named by their SHA-256 (identical files stored once); null:
  # <data_dir>/media.
  store_path: null
  # Thumbnail sizes made (on first request, then kept); a request gets the smallest of its
  # method at least as large as asked. crop: exactly that size; scale: fits inside.
  thumbnail_sizes:
    - {width: 32, height: 32, method: crop}
    - {width: 96, height: 96, method: crop}
    - {width: 320, height: 240, method: scale}
    - {width: 640, height: 480, method: scale}
    - {width: 800, height: 600, method: scale}
  # Images with more pixels than this get no thumbnail (decompression bombs).
  max_thumbnail_source_pixels: 32000000
  # `homeserver media purge-remote` without --before deletes cached remote media not
  # accessed for this long: <n>d, <n>h, <n>m or <n>s.
  remote_retention: "90d"
  # The legacy unauthenticated GET /_matrix/media/v3/download and /thumbnail. Off (as
  # Synapse freezes legacy media): they answer 404 and clients use /_matrix/client/v1/media.
  legacy_unauthenticated: false
  # URL previews (GET /_matrix/client/v1/media/preview_url), off by default. When on, pages
  # are fetched through the outbound client, so federation.ip_range_denylist/allowlist
  # apply (loopback, private and link-local addresses refused unless allowed); one preview
  # may take timeout seconds in all and read max_page_bytes of a page (an og:image up to
  # max_upload_size, kept as media); answers are cached for cache_seconds.
  url_preview:
    enabled: false
    timeout: 10.0
    max_page_bytes: 1048576
    max_concurrent: 4
    cache_seconds: 3600
  # Uploads per user (token bucket): burst_count at once, refilled at per_second.
  upload_rate_limit:
    per_second: 1.0
    burst_count: 10
  # Asynchronous uploads (POST /_matrix/media/v1/create) waiting for their bytes per user,
  # and the seconds an unused one stays reserved.
  max_pending_uploads: 10
  unused_expiry_seconds: 86400
  # Other servers' media, fetched over federation and cached: seconds one fetch may take
  # in all (then 502), fetches running at once in all and per remote server, and fetches
  # running or waiting in all (past it a fetch is refused at once).
  remote_fetch:
    timeout: 60.0
    max_concurrent: 10
    max_per_host: 2
    max_pending: 100
  # An upload (POST /_matrix/media/v3/upload, PUT .../upload/{serverName}/{mediaId}) that
  # declares its size may take longer than listeners.client.body_timeout: after that grace
  # its bytes must keep arriving at this rate on average (bytes/s), all within body_timeout
  # + size / min_upload_rate. 0: uploads get body_timeout like any other request.
  min_upload_rate: 65536
presence:
  # Online status (docs/presence.md): PUT/GET /presence, presence in /sync, m.presence
  # EDUs to and from the servers that share a room with the user. false: PUT is accepted
  # but nothing is kept, shown or sent, and received presence is dropped.
  enabled: true
  # An online user with no activity (a /sync with set_presence=online, a PUT of online)
  # for idle_timeout_seconds becomes unavailable; one with no /sync in flight and none
  # started (nor a PUT) for offline_timeout_seconds becomes offline.
  idle_timeout_seconds: 300.0
  offline_timeout_seconds: 30.0
  # Another server gets at most one update per user per federation_interval_seconds;
  # changes in between are coalesced (the latest state is sent when the time comes).
  federation_interval_seconds: 10.0
  # Remote users whose presence is kept in memory (past this, the least recently updated
  # is forgotten), and outbound updates held back by the rate limit (the oldest dropped).
  max_remote_users: 10000
  max_pending_updates: 100000

logging:
  # DEBUG, INFO, WARNING, ERROR or CRITICAL.
  level: "INFO"
  # json (one object per line) or text.
  format: "json"
""")

SAMPLE_VALUES = {
    "server_name": "localhost:8448",
    "data_dir": "./data",
    "bind": "127.0.0.1",
    "client_port": "8008",
    "federation_port": "8448",
    "metrics_port": "9009",
    "enable_registration": "false",
    "registration_token": "null",
    "registration_without_verification": "false",
}

# generate-config --registration: off (the default), token (a random registration token,
# written here and printed), open (anyone may register, no verification).
REGISTRATION_MODES = ("off", "token", "open")


def render(
    server_name: str,
    data_dir: str,
    client_port: int = 8008,
    federation_port: int = 8448,
    metrics_port: int = 9009,
    *,
    bind: str = "127.0.0.1",
    registration: str = "off",
    registration_token: str | None = None,
) -> str:
    if registration not in REGISTRATION_MODES:
        raise ValueError(f"registration must be one of {', '.join(REGISTRATION_MODES)}")
    if (registration == "token") != (registration_token is not None):
        raise ValueError("a registration token goes with registration mode token, and only with it")
    return TEMPLATE.substitute(
        server_name=server_name,
        data_dir=data_dir,
        bind=bind,
        client_port=client_port,
        federation_port=federation_port,
        metrics_port=metrics_port,
        enable_registration="false" if registration == "off" else "true",
        registration_token="null" if registration_token is None else f'"{registration_token}"',
        registration_without_verification="true" if registration == "open" else "false",
    )
