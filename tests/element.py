"""Element's own SDK as a test client: matrix-js-sdk with its Rust crypto under Node.

The scenarios are the Node scripts of tests/e2e_js (pinned by its package-lock.json); each
logs in as Element does, runs one exchange and prints one JSON result, which the tests assert
on. ``ensure_installed`` runs ``npm ci`` once when node_modules is missing; a missing node or
npm FAILS the tests (a real client's crypto is what the tests are about: no skip).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

E2E_JS = Path(__file__).resolve().parent / "e2e_js"
NODE_MAJOR_MIN = 20
NPM_TIMEOUT = 600.0
# One scenario's own budget (the script gives up and reports), and the hard limit on its process.
SCENARIO_MS = 90_000
PROCESS_TIMEOUT = SCENARIO_MS / 1000 + 30

# The endpoints of end-to-end encryption: any error answer from one of them is worth showing.
E2EE_PATHS = ("/keys/", "/room_keys/", "/sendToDevice/")


def ensure_installed() -> Path:
    """The ``node`` to run the scenarios with, after ``npm ci`` if node_modules is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required for the Element SDK tests (tests/e2e_js): install Node >= 20")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    if int(version.strip().lstrip("v").split(".")[0]) < NODE_MAJOR_MIN:
        pytest.fail(f"Node >= {NODE_MAJOR_MIN} is required for tests/e2e_js, found {version.strip()}")
    # npm ci writes node_modules/.package-lock.json: older than the lock file means stale.
    marker = E2E_JS / "node_modules" / ".package-lock.json"
    with open(E2E_JS / ".npm-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing: wait for it
        if not marker.exists() or marker.stat().st_mtime < (E2E_JS / "package-lock.json").stat().st_mtime:
            done = subprocess.run(
                [npm, "ci", "--prefix", str(E2E_JS), "--no-audit", "--no-fund", "--prefer-offline"],
                capture_output=True, text=True, timeout=NPM_TIMEOUT,
            )
            if done.returncode != 0 or not marker.exists():
                pytest.fail(f"npm ci in tests/e2e_js failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(node)


def user(base_url: str, user_id: str, password: str) -> dict[str, str]:
    return {"baseUrl": base_url, "userId": user_id, "password": password}


async def run_scenario(node: Path, name: str, a: dict[str, str], b: dict[str, str], **extra: Any) -> dict[str, Any]:
    """Run tests/e2e_js/<name>.mjs (users ``a`` and ``b``) and return its JSON result.

    Runs as an asyncio subprocess: the servers under test share this event loop.
    """
    config = json.dumps({"a": a, "b": b, "timeoutMs": SCENARIO_MS, **extra})
    proc = await asyncio.create_subprocess_exec(
        str(node), str(E2E_JS / f"{name}.mjs"), config, cwd=E2E_JS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"scenario {name} did not finish within {PROCESS_TIMEOUT}s") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"scenario {name} exited {proc.returncode}:\n{err.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr_tail"] = err.decode()[-2000:]
    return result


def explain(result: dict[str, Any]) -> str:
    """A failure message: the first failed step, and the E2EE endpoints that answered an error."""
    failed = [s for s in result["steps"] if not s["ok"]]
    errors = sorted({f"{m} {p} -> {s}" for m, p, s in result["http_errors"] if any(k in p for k in E2EE_PATHS)})
    return (f"scenario {result['scenario']}: failed step {failed[:1]}; unhandled {result['unhandled'][:2]}; "
            f"E2EE endpoints answering errors: {errors}")


def step(result: dict[str, Any], name: str) -> dict[str, Any]:
    """The named step of a passed scenario (asserting it is there and passed)."""
    [found] = [s for s in result["steps"] if s["name"] == name]
    assert found["ok"], explain(result)
    return found


def assert_passed(result: dict[str, Any]) -> None:
    """Every step passed; no request answered a 5xx; no /keys or /sendToDevice endpoint was
    missing (a 404 from /room_keys/version only says there is no backup yet)."""
    assert result["ok"], explain(result)
    unexpected = [
        (m, p, s) for m, p, s in result["http_errors"]
        if s >= 500 or (s == 404 and p.startswith(("/_matrix/client/v3/keys/", "/_matrix/client/v3/sendToDevice/")))
    ]
    assert not unexpected, f"scenario {result['scenario']}: {unexpected}"
