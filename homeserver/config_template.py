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
    bind: "127.0.0.1"
    port: $client_port
  # Server-server API. With tls: false it serves plain HTTP, for a server behind a
  # TLS-terminating reverse proxy.
  federation:
    bind: "127.0.0.1"
    port: $federation_port
    tls: true
    tls_certificate_path: "$data_dir/tls.crt"
    tls_private_key_path: "$data_dir/tls.key"
  # Prometheus metrics (GET /metrics), off the public federation port.
  metrics:
    enabled: true
    bind: "127.0.0.1"
    port: $metrics_port

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

logging:
  # DEBUG, INFO, WARNING, ERROR or CRITICAL.
  level: "INFO"
  # json (one object per line) or text.
  format: "json"
""")

SAMPLE_VALUES = {
    "server_name": "localhost:8448",
    "data_dir": "./data",
    "client_port": "8008",
    "federation_port": "8448",
    "metrics_port": "9009",
}


def render(
    server_name: str,
    data_dir: str,
    client_port: int = 8008,
    federation_port: int = 8448,
    metrics_port: int = 9009,
) -> str:
    return TEMPLATE.substitute(
        server_name=server_name,
        data_dir=data_dir,
        client_port=client_port,
        federation_port=federation_port,
        metrics_port=metrics_port,
    )
