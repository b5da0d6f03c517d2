"""Services: every component built in one place, opened in order and closed in reverse;
a failure half-way closes exactly what was opened; one notifier shared by all."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeserver import app as app_module
from homeserver.app import Services
from tests.conftest import DatabaseFactory
from tests.servers import make_config


def _record_closes(monkeypatch: pytest.MonkeyPatch, order: list[str]) -> None:
    """Wrap each component's real shutdown so that its call is recorded."""
    for name, cls, method in (
        ("worker", app_module.InboundWorker, "stop"),
        ("sender", app_module.OutboundSender, "stop"),
        ("client", app_module.FederationClient, "close"),
    ):
        real = getattr(cls, method)

        async def wrapped(self: object, _real: object = real, _name: str = name) -> None:
            order.append(_name)
            await _real(self)  # type: ignore[operator]

        monkeypatch.setattr(cls, method, wrapped)
    real_open = app_module.open_database

    async def opening(*args: object, **kwargs: object) -> object:
        db = await real_open(*args, **kwargs)  # type: ignore[arg-type]
        real_close = db.close

        async def close() -> None:
            order.append("db")
            await real_close()

        db.close = close  # type: ignore[method-assign]
        return db

    monkeypatch.setattr(app_module, "open_database", opening)


async def test_services_close_in_reverse_order_of_opening(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    _record_closes(monkeypatch, order)
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    services = await Services.open(config)
    # One notifier, shared by everything that has news for /sync.
    assert services.persister.notifier is services.notifier
    assert services.rooms.notifier is services.notifier
    assert order == []
    await services.close()
    assert order == ["worker", "sender", "client", "db"]


async def test_a_failure_half_way_closes_what_was_opened(
    db_factory: DatabaseFactory, tmp_path: Path, test_ca: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    _record_closes(monkeypatch, order)

    async def broken_start(self: object) -> None:
        raise RuntimeError("the worker cannot start")

    monkeypatch.setattr(app_module.InboundWorker, "start", broken_start)
    config = make_config(tmp_path / "hs", await db_factory.new_settings(), test_ca)
    with pytest.raises(RuntimeError, match="cannot start"):
        await Services.open(config)
    # The worker's stop was registered before its start (a half-started worker is stopped).
    assert order == ["worker", "sender", "client", "db"]
