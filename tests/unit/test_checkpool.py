"""The check helpers: verdicts equal to the inline checks, and no helper outlives its
server, even a server killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from homeserver.rooms.checks.pool import check_batch

ROOT = Path(__file__).resolve().parents[2]


def test_verdicts_of_a_batch() -> None:
    import json

    from nacl.signing import SigningKey
    from signedjson.key import generate_signing_key

    from homeserver.events.signing import sign_event
    from homeserver.events.versions import get_room_version

    version = get_room_version("11")
    key = generate_signing_key("k1")
    base = {
        "type": "m.room.message", "room_id": "!r:a.example", "sender": "@u:a.example", "depth": 3,
        "origin_server_ts": 1, "content": {"body": "hi"}, "prev_events": ["$p"], "auth_events": ["$a"],
    }
    good = sign_event(base, version, "a.example", key)
    tampered = dict(good, content={"body": "changed"})
    keys = {"a.example": {"ed25519:k1": bytes(key.verify_key)}}
    other = {"a.example": {"ed25519:k1": bytes(SigningKey.generate().verify_key)}}
    verdicts = check_batch([
        (json.dumps(good), "11", keys),
        (json.dumps(tampered), "11", keys),
        (json.dumps(good), "11", other),
        (json.dumps({"type": 1}), "11", keys),
        ("not json", "11", keys),
    ])
    assert [v for v, _ in verdicts] == ["ok", "redact", "signature", "format", "format"]


async def test_helpers_yield_the_cpu_to_the_server() -> None:
    from homeserver.rooms.checks.pool import HELPER_NICENESS, HELPER_POLICY, CheckPool

    pool = CheckPool(1)
    try:
        await pool.check([("{}", "11", {})])  # starts the helper
        helper = pool._pool
        assert helper is not None
        niceness = await asyncio.wrap_future(helper.submit(os.nice, 0))
        assert niceness == os.nice(0) + HELPER_NICENESS
        if HELPER_POLICY is not None:  # Linux: the idle scheduling class
            policy = await asyncio.wrap_future(helper.submit(os.sched_getscheduler, 0))
            assert policy == HELPER_POLICY
            assert os.sched_getscheduler(0) != HELPER_POLICY  # the server itself is not
    finally:
        pool.close()


def test_helpers_exit_when_the_server_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent("""
        import asyncio, os, signal, sys
        from homeserver.rooms.checks.pool import CheckPool

        async def main() -> None:
            pool = CheckPool(1)
            await pool.check([("{}", "11", {})])
            print(" ".join(str(p) for p in pool._pool._processes), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            asyncio.run(main())
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    helpers = [int(p) for p in proc.stdout.split()]
    assert helpers
    deadline = time.monotonic() + 10
    alive = helpers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in helpers if _alive(p)]
    for p in alive:  # do not leave them behind even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_a_batch_not_checked_in_time_is_given_up_and_the_pool_started_afresh() -> None:
    from homeserver.rooms.checks.pool import CheckPool

    pool = CheckPool(1, timeout=0.001)  # starting a helper alone takes longer than this
    try:
        with pytest.raises(TimeoutError):
            await pool.check([("{}", "11", {})])
        assert pool._pool is None  # the stuck pool was let go
        pool.timeout = 60.0
        assert [v for v, _ in await pool.check([("{}", "11", {})])] == ["format"]
        assert pool.batches == 1
    finally:
        pool.close()
