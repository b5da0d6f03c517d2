"""The testbed state file (``testbed.json``): which servers exist, their ports, URLs,
databases and the process IDs of the ones this machine started.

Written atomically (temp file + rename), so a crashed command never leaves it half
written. Servers of a compose set-up are listed too (``managed: false``): scenarios read
the URLs from here and never touch their processes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "testbed.json"
STATE_VERSION = 1


class TestbedError(Exception):
    """A testbed command failed; the message is printed as one line."""

    __test__ = False  # not a pytest test class


@dataclass(slots=True)
class ServerEntry:
    name: str
    server_name: str
    client_url: str
    federation_url: str
    metrics_url: str
    config: str  # path of the config file (relative to the testbed directory)
    database: dict[str, Any] = field(default_factory=dict)
    managed: bool = True  # started by `testbed up` as a local process
    pid: int | None = None
    log: str | None = None


@dataclass(slots=True)
class TestbedState:
    directory: Path
    servers: list[ServerEntry] = field(default_factory=list)
    postgres_admin_dsn: str | None = None

    __test__ = False

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def server(self, name: str) -> ServerEntry:
        for entry in self.servers:
            if entry.name == name or entry.server_name == name:
                return entry
        known = ", ".join(e.name for e in self.servers) or "none"
        raise TestbedError(f"no server {name!r} in the testbed at {self.directory} (servers: {known})")

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {
            "version": STATE_VERSION,
            "postgres_admin_dsn": self.postgres_admin_dsn,
            "servers": [asdict(s) for s in self.servers],
        }
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, directory: Path, *, missing_ok: bool = False) -> TestbedState:
        path = directory / STATE_FILE
        if not path.exists():
            if missing_ok:
                return cls(directory)
            raise TestbedError(f"no testbed at {directory} (run `homeserver testbed up --dir {directory}`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise TestbedError(f"{path}: unsupported state version {data.get('version')!r}")
            servers = [ServerEntry(**s) for s in data["servers"]]
        except (ValueError, KeyError, TypeError) as e:
            raise TestbedError(f"{path}: unreadable testbed state ({e})") from None
        return cls(directory, servers, data.get("postgres_admin_dsn"))
