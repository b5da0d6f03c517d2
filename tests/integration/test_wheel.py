"""The package as a self-hoster gets it: ``python -m build`` makes an sdist and, from it, a
wheel; the wheel goes into a fresh virtualenv outside the checkout (its dependencies from
the package index), and the installed ``homeserver`` script, run from a directory with no
source tree and no PYTHONPATH, sets a server up (``generate-config``, ``migrate``, ``user
add``), runs it, and the server answers a password login and publishes a signing key that
verifies against the key file ``generate-config`` wrote."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from signedjson.key import decode_verify_key_base64, encode_verify_key_base64, get_verify_key, read_signing_keys
from signedjson.sign import verify_signed_json

from homeserver import __version__
from homeserver.storage.migrations import discover
from tests.conftest import DatabaseFactory
from tests.procs import server_process, tail, wait_ready
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
# What the copy of the checkout leaves out: virtualenvs, build output, caches, local data.
NOT_COPIED_TOP = {".git", ".venv", "build", "dist", "homeserver.egg-info", "data", "testbed"}
NOT_COPIED_ANYWHERE = shutil.ignore_patterns("__pycache__", ".*_cache", ".hypothesis")
# Everything an sdist may hold besides the package itself.
SDIST_TOP_LEVEL = {"PKG-INFO", "README.md", "pyproject.toml", "setup.cfg", "homeserver", "homeserver.egg-info"}
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Installed:
    venv: Path
    env: dict[str, str]  # no PYTHONPATH, the venv first on PATH

    @property
    def homeserver(self) -> Path:
        return self.venv / "bin" / "homeserver"


def _run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _not_copied(directory: str, names: list[str]) -> set[str]:
    skipped = set(NOT_COPIED_ANYWHERE(directory, names))
    return skipped | (NOT_COPIED_TOP & set(names)) if Path(directory) == ROOT else skipped


def _package_files() -> set[str]:
    """The checkout's package: every module and schema file, relative to the top."""
    package = ROOT / "homeserver"
    return {
        str(p.relative_to(ROOT)) for p in package.rglob("*")
        if p.suffix == ".py" or (p.parent == package / "storage" / "schema" and p.suffix == ".sql")
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Build an sdist and a wheel (from the sdist) out of a copy of the checkout, and install
    the wheel with its dependencies into a fresh venv; all outside the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    source, dist, venv = tmp / "src", tmp / "dist", tmp / "venv"
    shutil.copytree(ROOT, source, ignore=_not_copied)
    # Junk a careless sdist would pick up.
    (source / ".venv" / "lib").mkdir(parents=True)
    (source / ".venv" / "lib" / "junk.py").write_text("raise SystemExit('junk')\n")
    (source / "data").mkdir()
    (source / "data" / "signing.key").write_text("ed25519 junk AAAA\n")
    # The running venv's setuptools: no build environment to download.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source, cwd=tmp)
    (sdist,) = dist.glob("homeserver-*.tar.gz")
    (wheel,) = dist.glob("homeserver-*-py3-none-any.whl")
    assert sdist.name == f"homeserver-{__version__}.tar.gz"
    assert wheel.name == f"homeserver-{__version__}-py3-none-any.whl"

    with tarfile.open(sdist) as tar:
        members = [m.split("/", 1)[1] for m in tar.getnames() if "/" in m]
    assert {m.split("/")[0] for m in members} <= SDIST_TOP_LEVEL, sorted(members)
    assert {"README.md", "pyproject.toml", "PKG-INFO"} <= set(members)
    assert {m for m in members if m.endswith((".py", ".sql"))} == _package_files()
    # python -m build makes the wheel from the sdist, so the wheel shows the sdist is complete.
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(f"homeserver-{__version__}.dist-info/METADATA").decode()
    assert {n.split("/")[0] for n in names} == {"homeserver", f"homeserver-{__version__}.dist-info"}
    assert {n for n in names if not n.startswith(f"homeserver-{__version__}.dist-info/")} == _package_files()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Python: >=3.11" in metadata

    # A venv without pip of its own (faster); the running pip installs into it. The
    # dependencies come from the package index (pip's cache makes it quick).
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", wheel,
         cwd=tmp, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    yield Installed(venv, env)


def test_installed_package_is_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    assert _run(installed.homeserver, "--version", cwd=tmp_path, env=installed.env).strip() == (
        f"homeserver {__version__}"
    )
    where = _run(
        installed.venv / "bin" / "python", "-c",
        "import homeserver, homeserver.storage.migrations as m; print(homeserver.__file__); print(m.MIGRATIONS_DIR)",
        cwd=tmp_path, env=installed.env,
    ).split()
    assert all(Path(p).resolve().is_relative_to(installed.venv.resolve()) for p in where), where
    assert not any(Path(p).resolve().is_relative_to(ROOT) for p in where), where


async def _login_and_keys(config: dict[str, Any], data_dir: Path, proc: subprocess.Popen[bytes]) -> None:
    server_name = config["server_name"]
    client = f"http://127.0.0.1:{config['listeners']['client']['port']}"
    federation = f"https://127.0.0.1:{config['listeners']['federation']['port']}"
    # The federation certificate is generate-config's self-signed one: not verified here,
    # the signature of the key response is.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as s:
        await wait_ready(s, f"{client}/health", proc)

        login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                 "password": PASSWORD}
        async with s.post(f"{client}/_matrix/client/v3/login", json=login) as r:
            body = await r.json()
            assert r.status == 200, body
        assert body["user_id"] == f"@alice:{server_name}"
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        async with s.get(f"{client}/_matrix/client/v3/account/whoami", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["user_id"] == f"@alice:{server_name}"
        wrong = {**login, "password": "not the password"}
        async with s.post(f"{client}/_matrix/client/v3/login", json=wrong) as r:
            assert r.status == 403, await r.text()

        async with s.get(f"{federation}/_matrix/key/v2/server") as r:
            assert r.status == 200, await r.text()
            keys = await r.json()

    with (data_dir / "signing.key").open() as f:
        (signing_key,) = read_signing_keys(f)
    key_id = f"{signing_key.alg}:{signing_key.version}"
    assert keys["server_name"] == server_name
    assert set(keys["verify_keys"]) == {key_id}
    published = keys["verify_keys"][key_id]["key"]
    assert published == encode_verify_key_base64(get_verify_key(signing_key))
    verify_signed_json(keys, server_name, decode_verify_key_base64(signing_key.alg, signing_key.version, published))
    assert set(keys["signatures"][server_name]) == {key_id}
    assert keys["valid_until_ts"] > time.time() * 1000


async def _cli(installed: Installed, cwd: Path, *args: str | Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        installed.homeserver, *map(str, args), cwd=cwd, env=installed.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, f"homeserver {args} exited with {proc.returncode}: {err.decode()}"
    return out.decode()


async def test_installed_server_runs(installed: Installed, db_factory: DatabaseFactory, tmp_path: Path) -> None:
    work = tmp_path / "work"  # the working directory: no source tree, nothing on PYTHONPATH
    work.mkdir()
    data_dir = work / "hs"
    fed_port, client_port, metrics_port = free_port(), free_port(), free_port()
    await _cli(installed, work, "generate-config", "--server-name", f"localhost:{fed_port}", "--data-dir", "hs",
               "--client-port", str(client_port), "--federation-port", str(fed_port),
               "--metrics-port", str(metrics_port))
    cfg_file = data_dir / "homeserver.yaml"
    config = yaml.safe_load(cfg_file.read_text())
    assert {name: (listener["bind"], listener["port"]) for name, listener in config["listeners"].items()} == {
        "client": ("127.0.0.1", client_port),
        "federation": ("127.0.0.1", fed_port),
        "metrics": ("127.0.0.1", metrics_port),
    }
    config["database"].update(await db_factory.new_settings())
    cfg_file.write_text(yaml.safe_dump(config))

    out = await _cli(installed, work, "migrate", "-c", cfg_file)
    versions = ", ".join(str(m.version) for m in discover(db_factory.engine))
    assert out.strip() == f"applied migrations: {versions}"

    password_file = work / "alice.password"
    password_file.write_text(PASSWORD)
    await _cli(installed, work, "user", "add", "alice", "--admin", "--password-file", password_file, "-c", cfg_file)

    log = tmp_path / "server.log"
    with server_process(cfg_file, log, program=[str(installed.homeserver)], cwd=work, env=installed.env) as proc:
        try:
            await _login_and_keys(config, data_dir, proc)
        except BaseException:
            print(tail(log))
            raise
        # What systemd's stop does: SIGTERM, then a clean exit.
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, tail(log)
