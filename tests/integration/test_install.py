"""A non-editable install finds its migrations: the package is installed from a copy of
the source tree into a directory (no source tree on the path), and ``homeserver migrate``
run from there builds the schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from homeserver.storage.migrations import discover

ROOT = Path(__file__).resolve().parents[2]


def test_installed_package_migrates(tmp_path: Path) -> None:
    source, target, data = tmp_path / "src", tmp_path / "site", tmp_path / "data"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "homeserver", source / "homeserver", ignore=shutil.ignore_patterns("__pycache__"))
    started = time.monotonic()
    # The build backend of the running interpreter: no network, no build environment.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}

    def homeserver(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "homeserver", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import homeserver.storage.migrations as m; print(m.__file__, m.MIGRATIONS_DIR)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(p.startswith(str(target)) for p in where), where
    assert not (target / "homeserver" / "storage" / "schema" / "__init__.py").exists()
    homeserver("generate-config", "--server-name", "installed.test", "--data-dir", str(data))
    out = homeserver("migrate", "-c", str(data / "homeserver.yaml"))
    versions = ", ".join(str(m.version) for m in discover("sqlite"))
    assert out.strip() == f"applied migrations: {versions}"
    assert homeserver("migrate", "-c", str(data / "homeserver.yaml")).strip() == "schema is up to date"
    assert time.monotonic() - started < 60
