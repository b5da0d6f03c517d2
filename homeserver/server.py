"""Running the server: open services, start the listeners, wait for a signal, shut down."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from homeserver.app import Services, create_client_app, create_federation_app
from homeserver.config import Config, ConnectionLimitsConfig
from homeserver.connections import (
    BACKLOG,
    FD_RESERVE,
    ConnectionGuard,
    fit_caps,
    quiet_connection_noise,
    raise_fd_limit,
)
from homeserver.gcpolicy import QUIET_SECONDS, CollectorPolicy
from homeserver.http import MatrixAppRunner
from homeserver.ops import LoopLagProbe, create_metrics_app
from homeserver.slow_bodies import upload_allowance
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    services: Services
    runners: list[web.AppRunner] = field(default_factory=list)
    listeners: list[asyncio.Server] = field(default_factory=list)  # opened without an aiohttp site
    client_port: int = 0
    federation_port: int = 0
    metrics_port: int | None = None  # None when the metrics listener is disabled
    lag_probe: LoopLagProbe | None = None
    guards: dict[str, ConnectionGuard] = field(default_factory=dict)  # by listener name

    async def stop(self) -> None:
        """Stop accepting requests, then let the services finish and close (graceful)."""
        for listener in self.listeners:
            listener.close()
        for runner in reversed(self.runners):
            await runner.cleanup()
        for guard in self.guards.values():
            guard.close_all()
        if self.lag_probe is not None:
            await self.lag_probe.stop()
        await self.services.close()


def federation_ssl_context(config: Config) -> ssl.SSLContext | None:
    fed = config.listeners.federation
    if not fed.tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert fed.tls_certificate_path and fed.tls_private_key_path
    ctx.load_cert_chain(fed.tls_certificate_path, fed.tls_private_key_path)
    return ctx


# The start of a /send request as the federation listener reads it.
_SEND_REQUEST = b"PUT /_matrix/federation/v1/send/"


class _DoorBell(asyncio.Protocol):
    """A federation connection: aiohttp's protocol, told nothing new, except that the first
    bytes of a ``PUT /send`` ring the inbound worker's door bell at once (the worker holds
    back from then on). aiohttp reaches the request's handler, where the worker is told
    anyway, a turn or two of the event loop later, and each turn runs the worker's queued
    callbacks first: under a backlog that wait was most of a slow acknowledgement."""

    __slots__ = ("_inner", "_ring")

    def __init__(self, inner: asyncio.Protocol, ring: Callable[[], None]) -> None:
        self._inner = inner
        self._ring = ring

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def data_received(self, data: bytes) -> None:
        if data.startswith(_SEND_REQUEST):
            self._ring()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()


async def _site(
    app: web.Application, host: str, port: int, ssl_ctx: ssl.SSLContext | None,
    running: RunningServer, guard: ConnectionGuard, ring: Callable[[], None] | None = None,
) -> int:
    """Serve ``app`` on ``host:port`` (0: a free port); returns the port. Each connection
    goes through ``guard`` (connections.py: cap, timeouts, header size) and, with ``ring``,
    through ``_DoorBell`` (aiohttp's server is a protocol factory)."""
    runner = MatrixAppRunner(app, access_log=None, handle_signals=False, **guard.server_settings())
    await runner.setup()
    running.runners.append(runner)
    running.guards[guard.name] = guard
    factory = runner.server
    assert factory is not None
    guard.watch_requests(factory)
    make: Callable[[], asyncio.Protocol] = factory
    if ring is not None:
        bell = ring

        def make_with_bell() -> asyncio.Protocol:
            return _DoorBell(factory(), bell)

        make = make_with_bell

    # A TLS handshake happens before the guard sees the connection: bounded on its own.
    tls_timeout = guard.limits.header_timeout if ssl_ctx is not None else None
    server = await asyncio.get_running_loop().create_server(
        guard.protocol_factory(make), host, port, ssl=ssl_ctx, reuse_address=True, backlog=BACKLOG,
        ssl_handshake_timeout=tls_timeout, ssl_shutdown_timeout=tls_timeout,
    )
    running.listeners.append(server)
    sockets = getattr(server, "sockets", None) or []
    actual = sockets[0].getsockname()[1] if sockets else port
    return int(actual)


def _guards(config: Config) -> dict[str, ConnectionGuard]:
    """A guard per enabled listener, the caps fitted under the open-file limit with room
    for the database pool, outbound connections and helper processes."""
    listeners = config.listeners
    limits: dict[str, ConnectionLimitsConfig] = {"federation": listeners.federation, "client": listeners.client}
    if listeners.metrics.enabled:
        limits["metrics"] = listeners.metrics
    reserve = (FD_RESERVE + BACKLOG * len(limits) + config.federation.max_connections
               + config.database.pool_max_size + 4 * config.inbound.check_processes)
    caps = fit_caps({name: lim.max_connections for name, lim in limits.items()}, reserve)
    # Media uploads' bodies may take longer than body_timeout, at media.min_upload_rate.
    uploads = upload_allowance(listeners.client.body_timeout, config.media.min_upload_rate,
                               config.media.max_upload_size)
    return {name: ConnectionGuard(name, lim, max_connections=caps[name],
                                  slow_body=uploads if name == "client" else None) for name, lim in limits.items()}


async def start_server(config: Config, clock: Clock = SYSTEM_CLOCK) -> RunningServer:
    """Open the services and start the listeners; port 0 picks a free port. ``clock`` is
    the one clock handed to the services that take one (``Services.clock``)."""
    services = await Services.open(config, clock=clock)
    running = RunningServer(services)
    try:
        ssl_ctx = federation_ssl_context(config)
        guards = _guards(config)
        fed = config.listeners.federation
        running.federation_port = await _site(
            create_federation_app(services), fed.bind, fed.port, ssl_ctx, running, guards["federation"],
            ring=services.inbound_worker.door_bell,
        )
        cl = config.listeners.client
        running.client_port = await _site(
            create_client_app(services), cl.bind, cl.port, None, running, guards["client"]
        )
        mc = config.listeners.metrics
        if mc.enabled:
            running.metrics_port = await _site(
                create_metrics_app(services.db, services.metrics), mc.bind, mc.port, None, running,
                guards["metrics"],
            )
            running.lag_probe = LoopLagProbe(services.metrics)
            running.lag_probe.start()
    except BaseException:
        await running.stop()
        raise
    log.info(
        "homeserver started",
        extra={
            "server_name": config.server_name,
            "client_port": running.client_port,
            "federation_port": running.federation_port,
            "metrics_port": running.metrics_port,
            "database": config.database.engine,
        },
    )
    return running


async def run_forever(config: Config) -> None:
    # As many open files as allowed, and a flood of failing connections logged once per
    # interval, not once each (connections.py).
    fd_limit = raise_fd_limit()
    quiet_connection_noise(asyncio.get_running_loop())
    running = await start_server(config)
    fd_limit.log()
    # The process is ours alone (tests that run several servers in one process do not
    # come here): full garbage collections wait for quiet moments (see gcpolicy).
    worker = running.services.inbound_worker
    collector = CollectorPolicy(lambda: worker.quiet(QUIET_SECONDS), clock=running.services.clock)
    collector.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("homeserver stopping")
        await collector.stop()
        await running.stop()
        log.info("homeserver stopped")
