"""Config loading: the sample is complete and valid, and every mistake names its key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.config import Config, ConfigError, load_config, parse_config
from homeserver.config_template import SAMPLE_VALUES, TEMPLATE, render

ROOT = Path(__file__).resolve().parents[2]


def sample() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config.sample.yaml").read_text())
    return data


def test_sample_file_is_the_rendered_template() -> None:
    assert (ROOT / "config.sample.yaml").read_text() == TEMPLATE.substitute(SAMPLE_VALUES)


def test_sample_loads() -> None:
    config = load_config(ROOT / "config.sample.yaml")
    assert config.server_name == "localhost:8448"
    assert config.database.engine == "sqlite"
    assert config.listeners.client.port == 8008
    assert config.listeners.federation.port == 8448
    # relative paths resolve against the config file's directory
    assert config.signing_key_path == str(ROOT / "data" / "signing.key")


def _all_keys(cls: Any, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, key + "."))
    return keys


def test_sample_documents_every_key() -> None:
    data = sample()
    text = (ROOT / "config.sample.yaml").read_text()
    for key in _all_keys(Config):
        node: Any = data
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} missing from sample"
            node = node[part]
        # each key line is preceded by a comment line somewhere above in its block
        assert f"{key.split('.')[-1]}:" in text


def test_render_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "hs.yaml"
    path.write_text(render("hs.example.org", ".", 1, 2, 3))
    config = load_config(path)
    assert config.server_name == "hs.example.org"
    assert config.listeners.metrics.port == 3


@pytest.mark.parametrize(
    ("mutate", "key_in_message"),
    [
        (lambda d: d.pop("server_name"), "server_name: required key is missing"),
        (lambda d: d.update(server_name="bad name!"), "server_name:"),
        (lambda d: d["listeners"]["client"].update(port="eighty"), "listeners.client.port: must be an integer"),
        (lambda d: d["listeners"]["client"].update(port=70000), "listeners.client.port"),
        (lambda d: d["database"].update(engine="mysql"), "database.engine: must be one of"),
        (lambda d: d["database"].update(sqlite_sync="off"), "database.sqlite_sync: must be one of"),
        (lambda d: d["database"].update(engine="postgres", dsn=None), "database.dsn"),
        (lambda d: d.update(surprise=1), "surprise: unknown key"),
        (lambda d: d["federation"].update(hosts=["x"]), "federation.hosts: must be a mapping"),
        (lambda d: d["federation"].update(verify_tls="yes"), "federation.verify_tls: must be true or false"),
        (lambda d: d["federation"].update(request_timeout=0), "federation.request_timeout: must be positive"),
        (lambda d: d["listeners"]["federation"].update(tls_certificate_path=None), "tls_certificate_path"),
        (lambda d: d["logging"].update(level="LOUD"), "logging.level"),
        (lambda d: d.update(listeners=5), "listeners: must be a mapping"),
        (lambda d: d["rooms"].update(default_room_version="13"), "rooms.default_room_version: must be one of 1, 2"),
        (lambda d: d["rooms"].update(default_room_version=12), "rooms.default_room_version: must be a string"),
        (lambda d: d["well_known"].update(server="not a name!"), "well_known.server: 'not a name!' is not a valid"),
        (lambda d: d["well_known"].update(server="example.org:99999"), "well_known.server:"),
        (lambda d: d["outbound"].update(catch_up_max_pdus=0), "outbound.catch_up_max_pdus: must be positive"),
        (lambda d: d["outbound"].update(catch_up_max_age_hours=-1), "outbound.catch_up_max_age_hours: must be"),
        (lambda d: d["outbound"].update(catch_up_threshold=0), "outbound.catch_up_threshold: must be positive"),
        (lambda d: d["federation_limits"].update(key_fetch_memory=0), "federation_limits.key_fetch_memory: must be"),
    ],
)
def test_invalid_config_names_the_key(mutate: Any, key_in_message: str) -> None:
    data = sample()
    mutate(data)
    with pytest.raises(ConfigError) as e:
        parse_config(data, ROOT)
    assert key_in_message in str(e.value)


def test_new_keys_defaults_and_values() -> None:
    data = sample()
    config = parse_config(data, ROOT)
    assert config.rooms.default_room_version == "12"
    assert config.well_known.server is None
    assert (config.outbound.catch_up_max_pdus, config.outbound.catch_up_max_age_hours) == (10_000, 24.0)
    assert config.outbound.replay_max_pdus == 10_000
    data["rooms"]["default_room_version"] = "10"
    data["well_known"]["server"] = "matrix.example.org:443"
    data["outbound"]["catch_up_max_pdus"] = 500
    config = parse_config(data, ROOT)
    assert config.rooms.default_room_version == "10"
    assert config.well_known.server == "matrix.example.org:443"
    assert config.outbound.replay_max_pdus == 500


def test_old_catch_up_threshold_still_loads_as_the_pdu_bound() -> None:
    """A config generated before catch_up_max_pdus holds ``catch_up_threshold: 100``: it
    loads, and keeps its meaning (queued PDUs past which a destination is caught up)."""
    data = sample()
    del data["outbound"]["catch_up_max_pdus"], data["outbound"]["catch_up_max_age_hours"]
    data["outbound"]["catch_up_threshold"] = 100
    config = parse_config(data, ROOT)
    assert config.outbound.catch_up_threshold == 100 and config.outbound.replay_max_pdus == 100


def test_plain_http_federation_needs_no_certificate() -> None:
    data = sample()
    data["listeners"]["federation"] = {"tls": False, "port": 8448}
    assert parse_config(data, ROOT).listeners.federation.tls is False


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server_name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
