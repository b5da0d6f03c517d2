"""The local testbed through its command line, as a user runs it: three servers as separate
processes on loopback (SQLite, and PostgreSQL with a database per server), the
``amplification`` scenario's factor read from its output and from each server's
``/metrics``, a killed server restarted with its data, and ``down`` stopping everything.
Every test stops (and, on PostgreSQL, drops) what it started."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from homeserver.testbed.manager import is_running
from homeserver.testbed.state import TestbedState

COMMAND_TIMEOUT = 300.0
MESSAGES = 5


def run_testbed(directory: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "homeserver", "testbed", *args, "--dir", str(directory)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
    )
    if check:
        assert proc.returncode == 0, f"testbed {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def figures(output: str) -> dict[str, str]:
    last = output.strip().splitlines()[-1]
    return dict(re.findall(r"(\w+)=(\S+)", last))


def metric(metrics_url: str, name: str) -> float:
    """The sum of a metric's samples over all labels, from GET /metrics."""
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def inbound_pdus(metrics_url: str) -> float:
    return metric(metrics_url, "hs_inbound_pdus_total")


def login(client_url: str, user_id: str) -> int:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
            "password": "testbed-password"}
    req = urllib.request.Request(client_url + "/_matrix/client/v3/login", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.fixture(params=["sqlite", "postgres"])
def bed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "testbed"
    args = ["up", "--servers", "3"]
    if request.param == "postgres":
        args += ["--postgres", request.getfixturevalue("postgres_admin_dsn")]
    try:
        out = run_testbed(directory, *args)
        assert "hs3" in out.stdout and "/metrics" in out.stdout
        yield directory
    finally:
        if (directory / "testbed.json").exists():
            run_testbed(directory, "down", "--purge", check=False)
        state = TestbedState.load(directory, missing_ok=True)
        for entry in state.servers:  # belt and braces: nothing may outlive the test
            assert not is_running(state, entry)


def test_amplification_factor_is_one(bed: Path) -> None:
    state = TestbedState.load(bed)
    assert len(state.servers) == 3
    before = [inbound_pdus(s.metrics_url) for s in state.servers]
    proc = run_testbed(bed, "scenario", "amplification", "--messages", str(MESSAGES), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = figures(proc.stdout)
    assert got["result"] == "PASS"
    assert got["factor"] == "1.00"
    assert got["missing"] == "0"
    expected = MESSAGES * 2  # from each of the two other servers
    assert int(got["received"]) == int(got["expected"]) == 3 * expected
    # /metrics agrees: each server received exactly the others' messages (plus the joins
    # that happened before the scenario's baseline, which arrive once each too).
    after = [inbound_pdus(s.metrics_url) for s in state.servers]
    for b, a in zip(before, after, strict=True):
        assert a - b >= expected
    # Each join is received at most once by each other server: 2 joins x 2 servers.
    assert sum(after) - sum(before) <= 3 * expected + 4
    for s in state.servers:
        # Nothing was echoed (each server received exactly the others' messages, above); a
        # duplicate can only be a message its origin delivered after we had fetched it
        # to fill a gap (another server's message cited it first).
        assert metric(s.metrics_url, "hs_inbound_duplicate_pdus_total") <= metric(
            s.metrics_url, "hs_inbound_fetched_events_total")
        assert metric(s.metrics_url, "process_open_fds") > 0
        assert metric(s.metrics_url, "process_resident_memory_bytes") > 0
        # Metrics are served on their own listener, not on the public federation port.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(s.federation_url + "/metrics", timeout=10, context=ssl._create_unverified_context())
        e.value.close()
        assert e.value.code == 404
        assert metric(s.metrics_url, "hs_outbound_refused_relays_total") == 0


def test_kill_and_start_keep_the_data(bed: Path) -> None:
    state = TestbedState.load(bed)
    hs2 = state.server("hs2")
    proc = run_testbed(bed, "scenario", "ban", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert figures(proc.stdout)["arrived"] == "yes"
    banned = re.findall(r"@ban\w+:\S+", proc.stdout)[0]
    assert login(hs2.client_url, banned) == 200
    assert run_testbed(bed, "kill", "hs2").stdout.strip() == "killed hs2"
    status = run_testbed(bed, "status").stdout
    assert re.search(r"^hs2\s+\S+\s+stopped", status, re.M)
    assert re.search(r"^hs1\s+\S+\s+running", status, re.M)
    log = bed / "hs2" / "homeserver.log"
    started_lines = log.read_text().count("homeserver started")
    run_testbed(bed, "start", "hs2", "--log-level", "WARNING")
    # --log-level overrides the config's INFO: the INFO start-up line is not written.
    assert log.read_text().count("homeserver started") == started_lines
    # Same name, same keys, same database: the restarted server answers, and another
    # scenario involving it still passes (its old room and users are still there).
    assert TestbedState.load(bed).server("hs2").server_name == hs2.server_name
    assert login(hs2.client_url, banned) == 200  # the user survived the SIGKILL
    proc = run_testbed(bed, "scenario", "amplification", "--messages", "2", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # `up` on the existing directory starts nothing new and keeps everything.
    out = run_testbed(bed, "up", "--servers", "3").stdout
    assert "created" not in out and "starting" not in out


def test_down_stops_every_server(bed: Path) -> None:
    state = TestbedState.load(bed)
    assert all(is_running(state, e) for e in state.servers)
    run_testbed(bed, "stop", "hs1")
    run_testbed(bed, "down")
    state = TestbedState.load(bed)
    assert not any(is_running(state, e) for e in state.servers)
    assert all(e.pid is None for e in state.servers)
    for e in state.servers:
        with pytest.raises(OSError):
            urllib.request.urlopen(e.client_url + "/health", timeout=2)
    # Logs went to files in the testbed directory, and the shutdown was graceful.
    log = (bed / "hs2" / "homeserver.log").read_text()
    assert "homeserver stopped" in log
