"""Finding a PostgreSQL for the tests: a DSN, the local server, or a throwaway cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import asyncpg

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class PostgresUnavailable(Exception):
    pass


_cluster: dict[str, str] = {}
_admin_dsn: str | None = None


async def _probe(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    await conn.close()


def _can_connect(dsn: str) -> str | None:
    # Runs in its own thread: the caller may be inside a running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(asyncio.run, _probe(dsn))
    try:
        future.result()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_throwaway() -> str:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise PostgresUnavailable("no initdb/pg_ctl installed")
    datadir = tempfile.mkdtemp(prefix="hs-pg-")
    port = _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        os.chmod(datadir, 0o777)
        shutil.chown(datadir, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*prefix, initdb, "-D", datadir, "-U", "postgres", "--auth=trust"],
        check=True, capture_output=True,
    )
    subprocess.run(
        [*prefix, pg_ctl, "-D", datadir, "-l", str(Path(datadir) / "log"), "-w",
         "-o", f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1", "start"],
        check=True, capture_output=True,
    )
    _cluster.update(datadir=datadir, pg_ctl=pg_ctl, prefix=" ".join(prefix))
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def get_admin_dsn() -> str:
    """A DSN of a database from which test databases can be created."""
    global _admin_dsn
    if _admin_dsn is not None:
        return _admin_dsn
    explicit = os.environ.get("HOMESERVER_TEST_POSTGRES_DSN")
    dsn = explicit or DEFAULT_DSN
    error = _can_connect(dsn)
    if error is None:
        _admin_dsn = dsn
        return dsn
    if explicit:
        raise PostgresUnavailable(f"{dsn}: {error}")
    try:
        dsn = _start_throwaway()
    except (subprocess.CalledProcessError, OSError, KeyError) as e:
        raise PostgresUnavailable(f"{DEFAULT_DSN}: {error}; throwaway cluster: {e}") from None
    error = _can_connect(dsn)
    if error is not None:
        raise PostgresUnavailable(f"throwaway cluster: {error}")
    _admin_dsn = dsn
    return dsn


def stop_throwaway_cluster() -> None:
    if not _cluster:
        return
    prefix = _cluster["prefix"].split() if _cluster["prefix"] else []
    subprocess.run(
        [*prefix, _cluster["pg_ctl"], "-D", _cluster["datadir"], "-m", "fast", "stop"],
        capture_output=True, check=False,
    )
    shutil.rmtree(_cluster["datadir"], ignore_errors=True)
    _cluster.clear()
