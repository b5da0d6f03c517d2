"""Running the server: open services, start the listeners, wait for a signal, shut down."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass, field

from aiohttp import web

from homeserver.app import Services, create_client_app, create_federation_app
from homeserver.config import Config
from homeserver.gcpolicy import QUIET_SECONDS, CollectorPolicy
from homeserver.ops import LoopLagProbe, create_metrics_app

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    services: Services
    runners: list[web.AppRunner] = field(default_factory=list)
    client_port: int = 0
    federation_port: int = 0
    metrics_port: int | None = None  # None when the metrics listener is disabled
    lag_probe: LoopLagProbe | None = None

    async def stop(self) -> None:
        """Stop accepting requests, then let the services finish and close (graceful)."""
        for runner in reversed(self.runners):
            await runner.cleanup()
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


async def _site(
    app: web.Application, host: str, port: int, ssl_ctx: ssl.SSLContext | None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_address=True)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    actual = sockets[0].getsockname()[1] if sockets else port
    return runner, int(actual)


async def start_server(config: Config) -> RunningServer:
    """Open the services and start the listeners; port 0 picks a free port."""
    services = await Services.open(config)
    running = RunningServer(services)
    try:
        ssl_ctx = federation_ssl_context(config)
        fed = config.listeners.federation
        runner, running.federation_port = await _site(
            create_federation_app(services), fed.bind, fed.port, ssl_ctx
        )
        running.runners.append(runner)
        cl = config.listeners.client
        runner, running.client_port = await _site(create_client_app(services), cl.bind, cl.port, None)
        running.runners.append(runner)
        mc = config.listeners.metrics
        if mc.enabled:
            runner, running.metrics_port = await _site(
                create_metrics_app(services.db, services.metrics), mc.bind, mc.port, None
            )
            running.runners.append(runner)
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
    running = await start_server(config)
    # The process is ours alone (tests that run several servers in one process do not
    # come here): full garbage collections wait for quiet moments (see gcpolicy).
    worker = running.services.inbound_worker
    collector = CollectorPolicy(lambda: worker.quiet(QUIET_SECONDS))
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
