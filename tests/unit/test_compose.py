"""docker-compose.yml, checked without a Docker engine: the services, volumes, ports,
start-up order and health checks, and the configs its init step writes (generated here
with the very command the init service runs, then loaded as the servers load them)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.cli import main
from homeserver.config import load_config
from homeserver.testbed.state import TestbedState

ROOT = Path(__file__).resolve().parents[2]
HOMESERVERS = ["hs1", "hs2", "hs3"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _container_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port; every port is published on the host's loopback only."""
    out = {}
    for mapping in service["ports"]:
        address, host, container = str(mapping).split(":")
        assert address == "127.0.0.1", mapping
        out[int(container)] = int(host)
    return out


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "init", *HOMESERVERS} <= set(services)
    assert {"pgdata", "testbed"} <= set(compose["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ["init", *HOMESERVERS]:
        assert "testbed:/testbed" in services[name]["volumes"], name
    # The scenario runner is a tool, not part of `docker compose up`.
    assert services["scenario"]["profiles"] == ["tools"]
    assert (ROOT / "Dockerfile").is_file()
    for name in ["init", "scenario", *HOMESERVERS]:
        assert services[name]["build"]["context"] == ".", name
        assert services[name]["image"] == "homeserver:dev", name


def test_start_order_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # Over TCP: during the image's first-start init PostgreSQL answers on its Unix socket only.
    check = services["postgres"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"] and check[check.index("-h") + 1] == "127.0.0.1"
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["init"]["restart"] == "no"
    for name in HOMESERVERS:
        s = services[name]
        assert s["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
        check = " ".join(s["healthcheck"]["test"])
        assert "/health" in check and "127.0.0.1:8008" in check
        assert s["stop_signal"] == "SIGTERM"
    # A scenario starts nothing: `docker compose run` would otherwise re-run init under the
    # running servers. One-shot containers have no health check of the image's.
    assert "depends_on" not in services["scenario"]
    for name in ("init", "scenario"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_ports_are_published_once(compose: dict[str, Any]) -> None:
    host_ports: list[int] = []
    for name in HOMESERVERS:
        ports = _container_ports(compose["services"][name])
        assert set(ports) == {8008, 8448, 9009}, name
        host_ports.extend(ports.values())
    assert len(host_ports) == len(set(host_ports))
    assert "ports" not in compose["services"]["postgres"]  # reachable on the compose network only


def test_init_step_writes_valid_configs(compose: dict[str, Any], tmp_path: Path) -> None:
    init = compose["services"]["init"]["command"]  # the image's entrypoint is `homeserver`
    assert init[:3] == ["testbed", "gen-configs", "--compose"]
    # Run the init command here, with the shared volume replaced by a temporary directory
    # and without creating databases (no PostgreSQL server named "postgres" here).
    args = [a for a in init if a != "--create-databases"]
    args[args.index("--dir") + 1] = str(tmp_path)
    assert main(args) == 0, shlex.join(args)
    assert (tmp_path / "ca.crt").is_file()
    dsns = set()
    for name in HOMESERVERS:
        service = compose["services"][name]
        command = service["command"]
        assert command[:2] == ["run", "-c"]
        config_path = tmp_path / Path(command[2]).relative_to("/testbed")
        config = load_config(config_path)
        assert config.server_name == f"{name}:8448"
        listeners = config.listeners
        assert (listeners.client.port, listeners.federation.port, listeners.metrics.port) == (8008, 8448, 9009)
        assert listeners.client.bind == listeners.federation.bind == listeners.metrics.bind == "0.0.0.0"
        assert listeners.metrics.enabled and listeners.federation.tls
        for path in (config.signing_key_path, listeners.federation.tls_certificate_path,
                     listeners.federation.tls_private_key_path, config.federation.extra_ca_file):
            assert path is not None and Path(path).is_file(), path
        assert config.federation.extra_ca_file == str(tmp_path / "ca.crt")
        assert config.database.engine == "postgres" and config.database.dsn is not None
        assert config.database.dsn.startswith("postgresql://postgres:postgres@postgres:5432/")
        dsns.add(config.database.dsn)
        assert config.client.enable_registration
    assert len(dsns) == len(HOMESERVERS)  # a database per homeserver
    # The state file lists the servers by their names on the compose network.
    state = TestbedState.load(tmp_path)
    assert [(s.name, s.client_url, s.managed) for s in state.servers] == [
        (n, f"http://{n}:8008", False) for n in HOMESERVERS
    ]
    # Running the init step again (a restarted `docker compose up`) keeps the keys and
    # leaves the configs under the running servers untouched.
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.glob("hs*/*") if p.is_file()}
    assert main(args) == 0
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept} == kept


def test_local_testbed_writes_the_same_config_shape(tmp_path: Path) -> None:
    """The local testbed's configs come from the same generator: only names, addresses and
    the database differ from the compose ones."""
    from homeserver.testbed.compose import compose_spec
    from homeserver.testbed.layout import ServerSpec, config_data

    local = ServerSpec(name="hs1", server_name="localhost:1234", cert_hosts=("localhost",), bind="127.0.0.1",
                       client_port=1, federation_port=1234, metrics_port=2, database={"engine": "sqlite"})
    a = config_data(local, tmp_path / "hs1", tmp_path / "ca.crt")
    b = config_data(compose_spec(1), tmp_path / "hs1", tmp_path / "ca.crt")
    differing = {k for k in a if a[k] != b[k]}
    assert differing == {"server_name", "listeners", "database"}


def test_dockerfile_builds_a_wheel_and_runs_unprivileged() -> None:
    """The image holds a wheel install (not editable), a non-root user and a health check;
    `make compose-test` builds and starts it for real."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    assert "pip wheel" in text and " -e " not in text and "--editable" not in text
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/health" in text
