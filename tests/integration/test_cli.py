"""The command line as a user meets it: generate a config, run, migrate, and fail cleanly."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from homeserver.crypto.keyring import parse_key_document
from homeserver.crypto.keys import load_key_file
from tests.conftest import DatabaseFactory
from tests.servers import free_port

HS = [sys.executable, "-m", "homeserver"]


def hs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HS, *args], capture_output=True, text=True, timeout=timeout)


def generate(tmp_path: Path, server_name: str = "localhost:8448") -> Path:
    data = tmp_path / "data"
    result = hs("generate-config", "--server-name", server_name, "--data-dir", str(data),
                "--client-port", str(free_port()), "--federation-port", str(free_port()))
    assert result.returncode == 0, result.stderr
    return data / "homeserver.yaml"


def test_console_script_installed() -> None:
    exe = shutil.which("homeserver", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "generate-config" in out.stdout


def test_generate_config_writes_config_key_and_certificate(tmp_path: Path) -> None:
    config = generate(tmp_path)
    data = config.parent
    assert {p.name for p in data.iterdir()} >= {"homeserver.yaml", "signing.key", "tls.crt", "tls.key"}
    key = load_key_file(data / "signing.key")
    assert key.key_id.startswith("ed25519:")
    assert oct((data / "signing.key").stat().st_mode & 0o777) == "0o600"
    # running it again keeps everything, key included
    before = (data / "signing.key").read_text()
    assert hs("generate-config", "--server-name", "localhost:8448", "--data-dir", str(data)).returncode == 0
    assert (data / "signing.key").read_text() == before


def test_version() -> None:
    from homeserver import __version__

    result = hs("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"homeserver {__version__}"


def test_generate_config_bind_address(tmp_path: Path) -> None:
    """--bind sets the client and federation listeners (a container publishes them); the
    metrics listener stays on loopback; the default is loopback everywhere."""
    from homeserver.config import load_config

    default = load_config(generate(tmp_path / "a"))
    assert {default.listeners.client.bind, default.listeners.federation.bind} == {"127.0.0.1"}
    data = tmp_path / "b"
    result = hs("generate-config", "--server-name", "example.test", "--data-dir", str(data), "--bind", "0.0.0.0")
    assert result.returncode == 0, result.stderr
    config = load_config(data / "homeserver.yaml")
    assert (config.listeners.client.bind, config.listeners.federation.bind) == ("0.0.0.0", "0.0.0.0")
    assert config.listeners.metrics.bind == "127.0.0.1"
    bad = hs("generate-config", "--server-name", "example.test", "--data-dir", str(tmp_path / "c"), "--bind", "all")
    assert bad.returncode == 2 and "not an IP address" in bad.stderr
    assert not (tmp_path / "c").exists()


def test_generate_config_refuses_bad_server_name(tmp_path: Path) -> None:
    result = hs("generate-config", "--server-name", "not a name", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "not a valid server name" in result.stderr


def test_generate_key_format(tmp_path: Path) -> None:
    result = hs("generate-key")
    assert result.returncode == 0
    alg, version, seed = result.stdout.split()
    assert alg == "ed25519" and version and len(seed) == 43
    out = tmp_path / "k"
    assert hs("generate-key", "-o", str(out)).returncode == 0
    again = hs("generate-key", "-o", str(out))
    assert again.returncode == 1 and "exists" in again.stderr


def _one_line_failure(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in lines[0]


def test_bad_config_one_line_error(tmp_path: Path) -> None:
    config = generate(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["database"]["engine"] = "oracle"
    config.write_text(yaml.safe_dump(data))
    _one_line_failure(hs("run", "-c", str(config)), "database.engine")
    _one_line_failure(hs("migrate", "-c", str(config)), "database.engine")
    _one_line_failure(hs("run", "-c", str(tmp_path / "missing.yaml")), "cannot read config file")


def test_bad_key_file_one_line_error(tmp_path: Path) -> None:
    config = generate(tmp_path)
    (config.parent / "signing.key").write_text("ed25519 a_bc not-base64!!\n")
    _one_line_failure(hs("run", "-c", str(config)), "signing key file")
    (config.parent / "signing.key").unlink()
    _one_line_failure(hs("run", "-c", str(config)), "cannot read signing key file")


def test_unreachable_database_one_line_error(tmp_path: Path) -> None:
    config = generate(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["database"] = {"engine": "postgres", "dsn": f"postgresql://nobody@127.0.0.1:{free_port()}/x",
                        "connect_timeout": 3.0}
    config.write_text(yaml.safe_dump(data))
    _one_line_failure(hs("run", "-c", str(config)), "cannot connect to PostgreSQL")
    _one_line_failure(hs("migrate", "-c", str(config)), "cannot connect to PostgreSQL")


async def test_migrate_command_on_both_engines(tmp_path: Path, db_factory: DatabaseFactory) -> None:
    config = generate(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["database"].update(await db_factory.new_settings())
    config.write_text(yaml.safe_dump(data))
    first = hs("migrate", "-c", str(config))
    assert first.returncode == 0 and "applied migrations: 1" in first.stdout
    second = hs("migrate", "-c", str(config))
    assert second.returncode == 0 and "up to date" in second.stdout


def test_run_serves_signed_keys(tmp_path: Path) -> None:
    config = generate(tmp_path)
    data = yaml.safe_load(config.read_text())
    fed_port = data["listeners"]["federation"]["port"]
    client_port = data["listeners"]["client"]["port"]
    log = tmp_path / "server.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen([*HS, "run", "-c", str(config)], stdout=subprocess.DEVNULL,
                                stderr=log_file)
    try:
        ctx = ssl.create_default_context(cafile=str(config.parent / "tls.crt"))
        ctx.check_hostname = False  # self-signed for localhost; we check the key document
        doc = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{fed_port}/_matrix/key/v2/server", context=ctx, timeout=2
                ) as r:
                    doc = json.load(r)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {log.read_text()}")
                time.sleep(0.2)
        assert doc is not None, "server never answered"
        keys, _ = parse_key_document(doc, "localhost:8448", int(time.time() * 1000))
        assert keys[0].key_id == load_key_file(config.parent / "signing.key").key_id
        with urllib.request.urlopen(f"http://127.0.0.1:{client_port}/_matrix/client/versions", timeout=5) as r:
            assert "versions" in json.load(r)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert "homeserver started" in log.read_text()
