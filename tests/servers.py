"""Real homeservers for integration tests: in-process, on loopback, with real TLS and keys."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from homeserver.config import Config, parse_config
from homeserver.crypto.keys import write_new_key_file
from homeserver.crypto.tls import issue_certificate
from homeserver.server import RunningServer, start_server

TEST_SCRYPT_LOG_N = 12

# Every test server lives on loopback: the outbound IP-range policy must let them reach
# each other (a test of the policy itself overrides this with an empty list).
LOOPBACK_RANGES = ["127.0.0.0/8", "::1/128"]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port for a server that must be named before it binds (the federation port is in
    its server name). Taken below the kernel's ephemeral range: a port the kernel handed out
    for port 0 could be handed out again, between this check and the server's bind, as the
    local port of some outbound connection (a CI run failed so: "address already in use")."""
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(100):
            port = random.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(
    directory: Path,
    db_settings: dict[str, str],
    ca: tuple[Path, Path],
    *,
    fed_port: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    fed_port = fed_port or free_port()
    server_name = f"localhost:{fed_port}"
    key_path = directory / "signing.key"
    if not key_path.exists():
        write_new_key_file(key_path)
    cert, key = directory / "tls.crt", directory / "tls.key"
    if not cert.exists():
        issue_certificate(cert, key, ["localhost", "127.0.0.1"], ca[0], ca[1])
    data: dict[str, Any] = {
        "server_name": server_name,
        "signing_key_path": str(key_path),
        "data_dir": str(directory),
        "listeners": {
            "client": {"bind": "127.0.0.1", "port": 0},
            "federation": {
                "bind": "127.0.0.1",
                "port": fed_port,
                "tls": True,
                "tls_certificate_path": str(cert),
                "tls_private_key_path": str(key),
            },
            "metrics": {"enabled": False},
        },
        "database": dict(db_settings),
        "federation": {"extra_ca_file": str(ca[0]), "request_timeout": 10.0,
                       "key_fetch_timeout": 5.0, "ip_range_allowlist": list(LOOPBACK_RANGES)},
        "logging": {"level": "WARNING"},
        # Tests register users freely: open registration, said explicitly; and cheap password
        # hashes (2^12 instead of the production 2^17, which test_secure_defaults asserts).
        "client": {"enable_registration": True, "enable_registration_without_verification": True,
                   "password_scrypt_log_n": TEST_SCRYPT_LOG_N},
    }
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k].update(v)
        else:
            data[k] = v
    return parse_config(data, directory)


@asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[RunningServer]:
    server = await start_server(config)
    try:
        yield server
    finally:
        await server.stop()
