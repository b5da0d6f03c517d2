"""A real Synapse for the interop suite: a cached virtualenv, a loopback config, a process.

``ensure_synapse_venv`` installs ``matrix-synapse`` (the pinned ``SYNAPSE_VERSION``, or
``HOMESERVER_INTEROP_SYNAPSE_VERSION``) into ``~/.cache/homeserver-interop/synapse-<version>``
with one ``pip install`` and marks it complete; later runs reuse it. A half-built venv (no
stamp) is rebuilt, and a file lock keeps two test sessions from building it at once.

``SynapseServer`` writes a complete ``homeserver.yaml`` for a server named ``localhost:PORT``
that federates over TLS with a certificate from the test CA, trusts that CA for outbound
federation, may reach loopback peers, trusts no key server (unless ``extra`` says
``trusted_key_servers``) and barely rate-limits; it runs
``python -m synapse.app.homeserver`` with its log in the server's directory, waits (bounded)
for ``/_matrix/client/versions`` and stops with SIGTERM, then SIGKILL after a bound.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from homeserver.crypto.keys import write_new_key_file
from homeserver.crypto.tls import issue_certificate

SYNAPSE_VERSION = os.environ.get("HOMESERVER_INTEROP_SYNAPSE_VERSION", "1.163.2")
CACHE_DIR = Path(os.environ.get("HOMESERVER_INTEROP_CACHE", Path.home() / ".cache" / "homeserver-interop"))
INSTALL_TIMEOUT = 1800.0
START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
STAMP = ".complete"

# Rate limits high enough that no test ever meets them.
_UNLIMITED = {"per_second": 1000, "burst_count": 1000}


def ensure_synapse_venv(version: str = SYNAPSE_VERSION) -> Path:
    """The Python of a virtualenv holding matrix-synapse ``version``; built once, then reused."""
    venv = CACHE_DIR / f"synapse-{version}"
    python = venv / "bin" / "python"
    if (venv / STAMP).exists():
        return python
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it: wait for it
        if (venv / STAMP).exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"matrix-synapse=={version}"],
            check=True, timeout=INSTALL_TIMEOUT,
        )
        (venv / STAMP).write_text(version + "\n")
    return python


def installed_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import synapse; print(synapse.__version__)"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    return out.stdout.strip()


def _log_config(log_file: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s %(name)s %(lineno)d %(levelname)s %(request)s %(message)s"}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "formatter": "precise", "filename": str(log_file),
                     "filters": ["context"], "encoding": "utf8"},
        },
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}, "twisted": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def synapse_config(directory: Path, fed_port: int, client_port: int, ca: tuple[Path, Path]) -> dict[str, Any]:
    """The whole homeserver.yaml of a loopback Synapse that federates with our test servers."""
    server_name = f"localhost:{fed_port}"
    cert, key = directory / "tls.crt", directory / "tls.key"
    log_config = directory / "log.config"
    log_config.write_text(yaml.safe_dump(_log_config(directory / "homeserver.log")))
    return {
        "server_name": server_name,
        "pid_file": str(directory / "homeserver.pid"),
        "signing_key_path": str(directory / "signing.key"),
        "log_config": str(log_config),
        "media_store_path": str(directory / "media"),
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "report_stats": False,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "registration_shared_secret": secrets.token_hex(16),
        # TLS on the federation listener, with a certificate for localhost from the test CA.
        "tls_certificate_path": str(cert),
        "tls_private_key_path": str(key),
        "listeners": [
            {"port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
             "x_forwarded": False, "resources": [{"names": ["federation", "keys"], "compress": False}]},
            {"port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
             "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]},
        ],
        # Outbound federation: trust the test CA, and let loopback peers through the IP
        # blacklist (without this Synapse drops them and logs a DNS error).
        "federation_custom_ca_list": [str(ca[0])],
        "federation_verify_certificates": True,
        "ip_range_whitelist": ["127.0.0.0/8"],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "presence": {"enabled": False},
        "rc_message": _UNLIMITED,
        "rc_registration": _UNLIMITED,
        "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
        "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
        "rc_joins_per_room": _UNLIMITED,
        "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
        "rc_admin_redaction": _UNLIMITED,
        "rc_key_requests": _UNLIMITED,
        "rc_federation": {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 1, "reject_limit": 10000,
                          "concurrent": 100},
        # Retry a peer that came back quickly (the defaults wait minutes).
        "federation": {"destination_min_retry_interval": 200, "destination_retry_multiplier": 2,
                       "destination_max_retry_interval": 2000, "client_timeout": "20s"},
    }


def _free_port() -> int:
    from tests.servers import free_port  # below the ephemeral range (see there)

    return free_port()


class SynapseServer:
    """One Synapse process on loopback; ``start``/``stop`` may be called again (same data)."""

    def __init__(self, python: Path, directory: Path, ca: tuple[Path, Path],
                 extra: dict[str, Any] | None = None) -> None:
        """``extra``: top-level keys of homeserver.yaml replaced (e.g. ``trusted_key_servers``)."""
        self.python = python
        self.directory = directory
        self.fed_port = _free_port()
        self.client_port = _free_port()
        self.server_name = f"localhost:{self.fed_port}"
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.log_file = directory / "homeserver.log"
        self.stdout_file = directory / "stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        write_new_key_file(directory / "signing.key")
        issue_certificate(directory / "tls.crt", directory / "tls.key", ["localhost", "127.0.0.1"], ca[0], ca[1])
        self.config_path = directory / "homeserver.yaml"
        config = {**synapse_config(directory, self.fed_port, self.client_port, ca), **(extra or {})}
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        assert not self.running
        with open(self.stdout_file, "ab") as out:
            self._proc = subprocess.Popen(
                [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.directory, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"synapse exited with {self._proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.client_url + "/_matrix/client/versions", timeout=2) as r:
                    if r.status == 200:
                        return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"synapse did not answer within {START_TIMEOUT}s:\n{self.logs()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def logs(self, tail: int = 200) -> str:
        """The last lines of the process output and of Synapse's log, for failure reports."""
        parts = []
        for f in (self.stdout_file, self.log_file):
            if f.exists():
                lines = f.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"==== {f}\n" + "\n".join(lines))
        return "\n".join(parts)
