"""The docker-compose testbed's files, written by the compose file's one-shot ``init``
service (``homeserver testbed gen-configs --compose``) into the shared volume.

The servers are ``hs1:8448``, ``hs2:8448``, ... (compose service names, resolvable on the
compose network), each with its own PostgreSQL database ``hsN`` on the ``postgres``
service, listening on all interfaces inside its container. The files come from the same
``write_server_files`` as the local testbed's; only names, addresses and the database
differ. A ``testbed.json`` lists the servers (unmanaged) with their in-network URLs, so a
scenario can run in a container on the same network.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from homeserver.config import Config
from homeserver.storage.pg_admin import create_database, database_dsn
from homeserver.testbed.layout import LOG_FILE, ServerSpec, write_server_files
from homeserver.testbed.state import ServerEntry, TestbedState

CLIENT_PORT = 8008
FEDERATION_PORT = 8448
METRICS_PORT = 9009
POSTGRES_HOST = "postgres"
# The compose file's PostgreSQL credentials (a throwaway testbed database).
POSTGRES_ADMIN_DSN = f"postgresql://postgres:postgres@{POSTGRES_HOST}:5432/postgres"


def compose_spec(index: int, admin_dsn: str = POSTGRES_ADMIN_DSN) -> ServerSpec:
    name = f"hs{index}"
    return ServerSpec(
        name=name,
        server_name=f"{name}:{FEDERATION_PORT}",
        cert_hosts=(name, "localhost", "127.0.0.1"),
        bind="0.0.0.0",
        client_port=CLIENT_PORT,
        federation_port=FEDERATION_PORT,
        metrics_port=METRICS_PORT,
        database={"engine": "postgres", "dsn": database_dsn(admin_dsn, name)},
    )


def generate(
    directory: Path, servers: int, *, admin_dsn: str = POSTGRES_ADMIN_DSN, create_databases: bool = False,
) -> list[Config]:
    """Write CA, keys, certificates, configs and ``testbed.json``, keeping every file that
    exists (a second run changes nothing under running servers); with
    ``create_databases`` also create each server's database (idempotent)."""
    configs: list[Config] = []
    state = TestbedState(directory)
    for index in range(1, servers + 1):
        spec = compose_spec(index, admin_dsn)
        if create_databases:
            asyncio.run(create_database(admin_dsn, spec.name))
        configs.append(write_server_files(directory, spec))
        state.servers.append(ServerEntry(
            name=spec.name, server_name=spec.server_name,
            client_url=f"http://{spec.name}:{CLIENT_PORT}",
            federation_url=f"https://{spec.name}:{FEDERATION_PORT}",
            metrics_url=f"http://{spec.name}:{METRICS_PORT}",
            config=f"{spec.name}/homeserver.yaml", database=dict(spec.database), managed=False,
            log=f"{spec.name}/{LOG_FILE}",
        ))
    state.save()
    return configs
