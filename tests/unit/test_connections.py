"""The pieces of connections.py that need no sockets: the throttle, the quiet exception
handler and log filter, fitting the caps under the open-file limit, raising that limit,
and the listener limits in the config."""

from __future__ import annotations

import errno
import logging
import resource
from pathlib import Path
from typing import Any

import pytest

from homeserver.config import ConfigError, parse_config
from homeserver.connections import QuietLoopErrors, QuietRepeats, Throttle, fit_caps, raise_fd_limit
from homeserver.util.clock import FakeClock


async def test_throttle_allows_one_per_interval_and_counts_the_rest() -> None:
    clock = FakeClock()
    throttle = Throttle(60.0, clock)
    assert throttle.allow("a") == 0
    assert [throttle.allow("a") for _ in range(5)] == [None] * 5
    assert throttle.allow("b") == 0  # another key is not held back
    await clock.advance(59.0)
    assert throttle.allow("a") is None
    await clock.advance(1.0)
    assert throttle.allow("a") == 6
    assert throttle.allow("a") is None


def test_throttle_keeps_a_bounded_number_of_keys() -> None:
    throttle = Throttle(60.0, FakeClock(), max_keys=10)
    for i in range(1000):
        throttle.allow(f"origin{i}")
    assert len(throttle._last) == 10


class _Loop:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.logged.append(context)


async def test_accept_failures_are_logged_once_per_interval() -> None:
    clock = FakeClock()
    handler = QuietLoopErrors(60.0, clock)
    loop = _Loop()
    for _ in range(1000):  # what asyncio reports when accept() fails with EMFILE
        handler(loop, {"message": "socket.accept() out of system resource",  # type: ignore[arg-type]
                       "exception": OSError(errno.EMFILE, "Too many open files"), "socket": object()})
    assert len(loop.logged) == 1
    # Another kind of failure is not held back by the first.
    handler(loop, {"message": "Task exception was never retrieved", "exception": ValueError()})  # type: ignore[arg-type]
    assert len(loop.logged) == 2
    await clock.advance(60.0)
    handler(loop, {"message": "socket.accept() out of system resource",  # type: ignore[arg-type]
                   "exception": OSError(errno.EMFILE, "Too many open files")})
    assert len(loop.logged) == 3
    assert "999 more like it" in loop.logged[-1]["message"]


async def test_repeated_aiohttp_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    logger = logging.getLogger("tests.quiet_repeats")
    quiet = QuietRepeats(60.0, clock)
    logger.addFilter(quiet)
    try:
        with caplog.at_level(logging.ERROR, logger="tests.quiet_repeats"):
            for i in range(500):
                try:
                    raise ValueError(f"bad request {i}")
                except ValueError:
                    logger.exception("Error handling request from %s", f"10.0.0.{i % 250}")
            assert len(caplog.records) == 1
            await clock.advance(60.0)
            try:
                raise ValueError("again")
            except ValueError:
                logger.exception("Error handling request from %s", "10.0.0.1")
            assert len(caplog.records) == 2
            assert getattr(caplog.records[-1], "suppressed", None) == 499
    finally:
        logger.removeFilter(quiet)


def test_caps_that_fit_are_kept_and_others_are_lowered_together() -> None:
    wanted = {"federation": 1000, "client": 1000, "metrics": 64}
    assert fit_caps(wanted, reserve=500, limit=100_000) == wanted
    fitted = fit_caps(wanted, reserve=500, limit=1024)
    assert sum(fitted.values()) <= 1024 - 500
    assert fitted["federation"] == fitted["client"] > fitted["metrics"] >= 1


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit is too low to lower the soft limit below it")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        raised = raise_fd_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised.before == 256 and raised.error is None
        assert now == raised.now > 256
        if hard != resource.RLIM_INFINITY:
            assert now == hard
        assert raise_fd_limit().now == now  # already there: nothing to do
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _config(listeners: dict[str, Any]) -> Any:
    merged = {"federation": {"tls": False}, **listeners}
    merged["federation"] = {"tls": False, **merged["federation"]}
    return parse_config({"server_name": "example.org", "signing_key_path": "k", "listeners": merged}, Path("/tmp"))


def test_listener_limits_have_defaults_and_are_checked() -> None:
    config = _config({})
    assert config.listeners.client.max_connections == 1000
    assert config.listeners.federation.header_timeout == 15.0
    assert config.listeners.metrics.max_connections == 64
    assert _config({"client": {"max_connections": 5}}).listeners.client.max_connections == 5
    for listener, key, value in (
        ("client", "max_connections", 0),
        ("federation", "header_timeout", 0),
        ("metrics", "body_timeout", -1),
        ("client", "keepalive_timeout", 0),
    ):
        with pytest.raises(ConfigError, match=rf"listeners\.{listener}\.{key}: must be positive"):
            _config({listener: {key: value}})
    with pytest.raises(ConfigError, match=r"listeners\.client\.max_header_bytes: must be at least 1024"):
        _config({"client": {"max_header_bytes": 100}})
