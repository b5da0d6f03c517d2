"""Secure defaults (issue 17, finding 9), on both engines with real servers: a generated
config has registration off and private files; passwords have a minimum length; failed
logins are limited per account whatever the address; X-Forwarded-For counts only from a
trusted proxy; password hashes use scrypt N=2^17 and older ones are upgraded at login."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.cli import main as cli_main
from homeserver.config import ClientConfig, ConfigError, load_config, parse_config
from homeserver.config_template import SAMPLE_VALUES, TEMPLATE
from homeserver.storage import users as users_module
from homeserver.storage.users import UserStore, hash_password_sync, needs_rehash
from tests.clients import client_server, nio_user, raw
from tests.conftest import DatabaseFactory
from tests.servers import free_port, running_server

V3 = "/_matrix/client/v3"
ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _generate(data: Path, *extra: str) -> Path:
    assert cli_main([
        "generate-config", "--server-name", "localhost:8448", "--data-dir", str(data),
        "--client-port", str(free_port()), "--federation-port", str(free_port()),
        "--metrics-port", str(free_port()), *extra,
    ]) == 0
    return data / "homeserver.yaml"


def _login(user: str, password: str) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}


# ---------------------------------------------------------------------- generate-config


async def test_generated_config_has_registration_off_and_private_files(
    db_factory: DatabaseFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config_path = _generate(data)
    # The data directory, config, signing key and TLS key are the owner's alone.
    assert _mode(data) == 0o700
    for name in ("homeserver.yaml", "signing.key", "tls.key"):
        assert _mode(data / name) == 0o600, name
    # --force rewrites a config that had become world-readable as 0600 again.
    config_path.chmod(0o644)
    assert cli_main(["generate-config", "--server-name", "localhost:8448", "--data-dir", str(data),
                     "--force"]) == 0
    assert _mode(config_path) == 0o600
    config_path.unlink()
    config_path = _generate(data)

    generated = yaml.safe_load(config_path.read_text())
    assert generated["client"]["enable_registration"] is False
    assert generated["client"]["enable_registration_without_verification"] is False
    assert generated["client"]["registration_token"] is None
    # A server run from it (on the engine under test) refuses to register anyone.
    generated["database"] = await db_factory.new_settings()
    generated["listeners"]["metrics"]["enabled"] = False
    config = parse_config(generated, config_path.parent)
    assert not config.client.enable_registration
    async with running_server(config) as server:
        for body in ({"username": "eve", "password": "long-enough-pw", "auth": {"type": "m.login.dummy"}},
                     {"username": "eve", "password": "long-enough-pw"}):
            status, reply = await raw(server, "POST", f"{V3}/register", json=body)
            assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
        status, reply = await raw(server, "GET", f"{V3}/register/m.login.registration_token/validity?token=x")
        assert (status, reply["errcode"]) == (403, "M_FORBIDDEN")
        assert await server.services.db.fetchval("SELECT COUNT(*) FROM users") == 0


async def test_generate_config_registration_modes(db_factory: DatabaseFactory, tmp_path: Path) -> None:
    token_config = load_config(_generate(tmp_path / "token", "--registration", "token"))
    token = token_config.client.registration_token
    assert token_config.client.enable_registration and token and len(token) >= 24
    assert not token_config.client.enable_registration_without_verification
    open_config = load_config(_generate(tmp_path / "open", "--registration", "open"))
    assert open_config.client.enable_registration and open_config.client.enable_registration_without_verification
    assert open_config.client.registration_token is None
    # The token mode's server asks for the token.
    data = yaml.safe_load((tmp_path / "token" / "homeserver.yaml").read_text())
    data["database"] = await db_factory.new_settings()
    data["listeners"]["metrics"]["enabled"] = False
    async with running_server(parse_config(data, tmp_path / "token")) as server:
        status, reply = await raw(server, "POST", f"{V3}/register", json={
            "username": "eve", "password": "long-enough-pw", "auth": {"type": "m.login.dummy"}})
        assert status == 401 and reply["flows"] == [{"stages": ["m.login.registration_token", "m.login.dummy"]}]


def test_open_registration_must_be_explicit() -> None:
    data: dict[str, Any] = yaml.safe_load(TEMPLATE.substitute(SAMPLE_VALUES))
    data["client"]["enable_registration"] = True
    with pytest.raises(ConfigError) as e:
        parse_config(data, ROOT)
    message = str(e.value)
    assert message.startswith("client.enable_registration:")
    assert "client.registration_token" in message and "enable_registration_without_verification" in message
    # Either a token or the explicit switch makes it valid.
    data["client"]["registration_token"] = "s3cret-token"
    assert parse_config(data, ROOT).client.enable_registration
    data["client"]["registration_token"] = None
    data["client"]["enable_registration_without_verification"] = True
    assert parse_config(data, ROOT).client.enable_registration_without_verification


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"password_min_length": 0}, "client.password_min_length"),
        ({"trusted_proxies": ["10.0.0.0/8", "not-an-ip"]}, "client.trusted_proxies[1]"),
        ({"password_scrypt_log_n": 9}, "client.password_scrypt_log_n"),
        ({"failed_login_rate_limit": {"per_second": 0, "burst_count": 5}}, "client.failed_login_rate_limit"),
    ],
)
def test_security_settings_are_checked(changes: dict[str, Any], key: str) -> None:
    data: dict[str, Any] = yaml.safe_load(TEMPLATE.substitute(SAMPLE_VALUES))
    data["client"].update(changes)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_config(data, ROOT)


def test_production_defaults_are_strong() -> None:
    """Tests lower the scrypt cost (tests/servers.py); production keeps N = 2^17."""
    defaults = ClientConfig()
    assert defaults.enable_registration is False
    assert defaults.enable_registration_without_verification is False
    assert defaults.password_min_length == 8
    assert defaults.password_scrypt_log_n == users_module.SCRYPT_LOG_N == 17
    assert (defaults.failed_login_rate_limit.burst_count, defaults.failed_login_rate_limit.per_second) == (5, 0.05)
    sample = load_config(ROOT / "config.sample.yaml").client
    assert sample.password_scrypt_log_n == 17 and not sample.enable_registration and sample.trusted_proxies == []
    stored = hash_password_sync("a password")
    assert stored.startswith("scrypt$131072$8$1$") and not needs_rehash(stored)
    assert needs_rehash(hash_password_sync("a password", 14))


# ---------------------------------------------------------------------- passwords


async def test_short_and_empty_passwords_are_refused(db_factory: DatabaseFactory, tmp_path: Path,
                                                     test_ca: tuple[Path, Path]) -> None:
    async with client_server(db_factory, tmp_path / "a", test_ca) as server:
        for password in ("", "seven77"):
            status, body = await raw(server, "POST", f"{V3}/register", json={
                "username": "bob", "password": password, "auth": {"type": "m.login.dummy"}})
            assert (status, body["errcode"]) == (400, "M_WEAK_PASSWORD"), password
        assert await server.services.db.fetchval("SELECT COUNT(*) FROM users") == 0
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "bob", "password": "eight888", "auth": {"type": "m.login.dummy"}})
        assert status == 200, body
        token = body["access_token"]
        for new_password in ("", "short"):
            status, reply = await raw(server, "POST", f"{V3}/account/password", token=token, json={
                "new_password": new_password,
                "auth": {"type": "m.login.password", "user": "bob", "password": "eight888"}})
            assert (status, reply["errcode"]) == (400, "M_WEAK_PASSWORD"), new_password
        status, _ = await raw(server, "POST", f"{V3}/login", json=_login("bob", "eight888"))
        assert status == 200
    # The minimum is configurable.
    extra = {"client": {"password_min_length": 12}}
    async with client_server(db_factory, tmp_path / "b", test_ca, extra) as server:
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "bob", "password": "eleven-char", "auth": {"type": "m.login.dummy"}})
        assert (status, body["errcode"]) == (400, "M_WEAK_PASSWORD")


# ---------------------------------------------------------------------- login limits


async def test_failed_logins_are_limited_per_account_across_addresses(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    # Every attempt from its own address (through a trusted proxy), so that only the
    # per-account bucket can stop them.
    extra = {"client": {"trusted_proxies": ["127.0.0.1/32"]}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server, \
            nio_user(server, "alice"), nio_user(server, "bob"):
        def via(i: int) -> dict[str, str]:
            return {"X-Forwarded-For": f"203.0.113.{i}"}

        # Right passwords do not use up the account's allowance.
        for i in range(6):
            status, _ = await raw(server, "POST", f"{V3}/login", json=_login("alice", "correct horse battery"),
                                  headers=via(100 + i))
            assert status == 200
        for i in range(5):
            status, body = await raw(server, "POST", f"{V3}/login", json=_login("alice", f"guess-{i}"),
                                     headers=via(i))
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), i
        # The sixth failure-or-not from yet another address: 429 for Alice, even with the
        # right password (no oracle), with the time to wait.
        for i, password in ((5, "guess-5"), (6, "correct horse battery")):
            status, body = await raw(server, "POST", f"{V3}/login", json=_login("alice", password), headers=via(i))
            assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
            assert body["retry_after_ms"] > 0
        # The full user ID is the same account.
        status, body = await raw(server, "POST", f"{V3}/login", json=_login(
            f"@alice:{server.services.config.server_name}", "correct horse battery"), headers=via(7))
        assert status == 429
        # Another account is not affected.
        status, _ = await raw(server, "POST", f"{V3}/login", json=_login("bob", "correct horse battery"),
                              headers=via(8))
        assert status == 200


async def test_concurrent_guesses_cannot_overrun_the_account_bucket(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    extra = {"client": {"trusted_proxies": ["127.0.0.1"]}}
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server, nio_user(server, "alice"):
        results = await asyncio.gather(*(
            raw(server, "POST", f"{V3}/login", json=_login("alice", f"guess-{i}"),
                headers={"X-Forwarded-For": f"203.0.113.{i}"})
            for i in range(40)
        ))
        statuses = sorted(status for status, _ in results)
        assert statuses == [403] * 5 + [429] * 35


async def test_forwarded_for_counts_only_from_trusted_proxies(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path]
) -> None:
    limit = {"per_second": 0.001, "burst_count": 2}

    async def attempts(server: Any, headers: list[dict[str, str]]) -> list[int]:
        # Each attempt for its own (unknown) user, so that only the per-IP bucket counts.
        out = []
        for i, h in enumerate(headers):
            status, _ = await raw(server, "POST", f"{V3}/login", json=_login(f"nobody{i}", "whatever-pw"),
                                  headers=h)
            out.append(status)
        return out

    distinct = [{"X-Forwarded-For": f"198.51.100.{i}"} for i in range(4)]
    # No trusted proxy (the default): the header is ignored, every attempt is 127.0.0.1's.
    async with client_server(db_factory, tmp_path / "a", test_ca, {"client": {"login_rate_limit": limit}}) as s:
        assert await attempts(s, distinct) == [403, 403, 429, 429]
    # A trusted proxy that is not the peer: still ignored.
    extra = {"client": {"login_rate_limit": limit, "trusted_proxies": ["10.0.0.0/8", "::1"]}}
    async with client_server(db_factory, tmp_path / "b", test_ca, extra) as s:
        assert await attempts(s, distinct) == [403, 403, 429, 429]
    # The peer is a trusted proxy: each forwarded address has its own bucket ...
    extra = {"client": {"login_rate_limit": limit, "trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}}
    async with client_server(db_factory, tmp_path / "c", test_ca, extra) as s:
        assert await attempts(s, distinct) == [403, 403, 403, 403]
        # ... and what the client wrote left of the address the proxy saw is not believed:
        # the rightmost untrusted address counts (10.0.0.7 is a trusted inner proxy).
        spoofed = [{"X-Forwarded-For": f"192.0.2.{i}, 198.51.100.77, 10.0.0.7"} for i in range(4)]
        assert await attempts(s, spoofed) == [403, 403, 429, 429]
        # A malformed entry stops the walk at the last trusted hop.
        assert await attempts(s, [{"X-Forwarded-For": "junk, 10.0.0.9"}] * 3) == [403, 403, 429]


# ---------------------------------------------------------------------- hashes


async def test_old_hash_upgraded_at_login(db_factory: DatabaseFactory, tmp_path: Path,
                                          test_ca: tuple[Path, Path]) -> None:
    extra = {"client": {"password_scrypt_log_n": 17}}  # the production cost
    async with client_server(db_factory, tmp_path / "a", test_ca, extra) as server:
        name = server.services.config.server_name
        db = server.services.db
        # A user stored by an older version, at N = 2^14.
        await UserStore(db, password_log_n=14).create_user(f"@old:{name}", "old-password", "old")

        async def stored() -> str:
            value = await db.fetchval("SELECT password_hash FROM users WHERE user_id = ?", f"@old:{name}")
            assert isinstance(value, str)
            return value

        assert (await stored()).startswith("scrypt$16384$8$1$")
        status, _ = await raw(server, "POST", f"{V3}/login", json=_login("old", "wrong-password"))
        assert status == 403
        assert (await stored()).startswith("scrypt$16384$")  # a wrong password changes nothing
        status, body = await raw(server, "POST", f"{V3}/login", json=_login("old", "old-password"))
        assert status == 200, body
        upgraded = await stored()
        assert upgraded.startswith("scrypt$131072$8$1$")
        # The upgraded hash logs in, and is not hashed again.
        status, _ = await raw(server, "POST", f"{V3}/login", json=_login("old", "old-password"))
        assert status == 200
        assert await stored() == upgraded
        # New accounts get the production cost at once.
        status, body = await raw(server, "POST", f"{V3}/register", json={
            "username": "new", "password": "new-password", "auth": {"type": "m.login.dummy"}})
        assert status == 200, body
        new_hash = await db.fetchval("SELECT password_hash FROM users WHERE user_id = ?", f"@new:{name}")
        assert str(new_hash).startswith("scrypt$131072$8$1$")
