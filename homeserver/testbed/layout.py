"""The files of a testbed server: CA, signing key, TLS certificate and config, written by
one function for both the local testbed and the docker-compose set-up.

Every path in a generated config is relative to the config file, so a testbed directory
works wherever it is mounted (``/testbed`` in the containers, any directory locally); every
server trusts the testbed's CA for outbound federation. Writing is idempotent: keys,
certificates and configs that exist are kept, so a second ``testbed up`` (or a restarted
compose init step) keeps every server's identity and data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from homeserver.config import Config, load_config
from homeserver.crypto.keys import write_new_key_file
from homeserver.crypto.tls import generate_ca, issue_certificate

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CONFIG_FILE = "homeserver.yaml"
LOG_FILE = "homeserver.log"

# Testbed tuning: a stopped server is retried within seconds, not an hour, so that the
# outage scenario's catch-up is measured in seconds.
TESTBED_OUTBOUND = {"backoff_initial_seconds": 1.0, "backoff_ceiling_seconds": 10.0}
# Scenarios register and log in users in bursts from one address.
TESTBED_CLIENT = {
    "register_rate_limit": {"per_second": 50.0, "burst_count": 200},
    "login_rate_limit": {"per_second": 50.0, "burst_count": 200},
}
TESTBED_FEDERATION = {"connect_timeout": 5.0, "request_timeout": 20.0, "key_fetch_timeout": 10.0}
# The outbound IP-range policy denies loopback and private addresses; a testbed's servers
# live there (one machine: loopback; docker compose: a private bridge network).
TESTBED_ALLOWED_RANGES = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What differs between the servers of a testbed."""

    name: str  # short name: directory, compose service, CLI argument (hs1, hs2, ...)
    server_name: str  # Matrix server name (localhost:PORT locally, hs1:8448 in compose)
    cert_hosts: tuple[str, ...]  # names in the TLS certificate
    bind: str
    client_port: int
    federation_port: int
    metrics_port: int
    database: dict[str, Any]  # {"engine": "sqlite"} or {"engine": "postgres", "dsn": ...}
    log_level: str = "INFO"


def ensure_ca(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / CA_CERT, directory / CA_KEY
    if not cert.exists() or not key.exists():
        generate_ca(cert, key, "homeserver testbed CA")
    return cert, key


def config_data(spec: ServerSpec, server_dir: Path, ca_cert: Path) -> dict[str, Any]:
    """The config of one server as YAML data; paths relative to ``server_dir``."""
    database: dict[str, Any] = dict(spec.database)
    if database.get("engine", "sqlite") == "sqlite":
        database = {"engine": "sqlite", "path": "homeserver.db"}
    return {
        "server_name": spec.server_name,
        "data_dir": ".",
        "signing_key_path": "signing.key",
        "listeners": {
            "client": {"bind": spec.bind, "port": spec.client_port},
            "federation": {
                "bind": spec.bind,
                "port": spec.federation_port,
                "tls": True,
                "tls_certificate_path": "tls.crt",
                "tls_private_key_path": "tls.key",
            },
            "metrics": {"enabled": True, "bind": spec.bind, "port": spec.metrics_port},
        },
        "database": database,
        "federation": {
            "extra_ca_file": os.path.relpath(ca_cert, server_dir), **TESTBED_FEDERATION,
            "ip_range_allowlist": list(TESTBED_ALLOWED_RANGES),
        },
        "outbound": dict(TESTBED_OUTBOUND),
        # Open registration (the dummy stage), said explicitly: testbed users are throwaway.
        "client": {"enable_registration": True, "enable_registration_without_verification": True,
                   **TESTBED_CLIENT},
        "logging": {"level": spec.log_level, "format": "json"},
    }


def write_server_files(root: Path, spec: ServerSpec, *, overwrite_config: bool = False) -> Config:
    """Write (or keep) the server's key, certificate and config under ``root/spec.name``;
    return the config as the server will load it."""
    ca_cert, ca_key = ensure_ca(root)
    server_dir = root / spec.name
    server_dir.mkdir(parents=True, exist_ok=True)
    key_path = server_dir / "signing.key"
    if not key_path.exists():
        write_new_key_file(key_path)
    cert, key = server_dir / "tls.crt", server_dir / "tls.key"
    if not cert.exists() or not key.exists():
        issue_certificate(cert, key, list(spec.cert_hosts), ca_cert, ca_key)
    config_path = server_dir / CONFIG_FILE
    if overwrite_config or not config_path.exists():
        header = (
            f"# Testbed server {spec.name} ({spec.server_name}), written by `homeserver testbed`.\n"
            "# Paths are relative to this file. See config.sample.yaml for every key.\n"
        )
        body = yaml.safe_dump(config_data(spec, server_dir, ca_cert), sort_keys=False)
        config_path.write_text(header + body, encoding="utf-8")
    return load_config(config_path)
