"""Operations endpoints and probes: ``GET /health``, the ``/metrics`` listener's app, and the
event-loop lag probe.

``/health`` answers 200 ``{"status": "ok"}`` while the database answers a trivial query
within a second, else 503: a container health check needs no more. ``/metrics`` refreshes
the figures that live in the database (inbox age, per-destination queue depths) with one
bounded query each, then renders the server's own registry in a worker thread (one
scrape at a time), so a large page never holds the event loop for more than a switch
interval of the interpreter; a slow database makes the scrape show the last values, never
hang. The series per remote server are bounded where they are made
(``metrics.PeerLabels``). The lag probe sleeps a fixed interval and records
how late it woke up, so a blocked loop shows in ``hs_event_loop_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from homeserver.metrics import Metrics
from homeserver.storage.database import Database
from homeserver.storage.ops import OpsStore
from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

HEALTH_DB_TIMEOUT_SECONDS = 1.0
SCRAPE_DB_TIMEOUT_SECONDS = 2.0
LAG_PROBE_INTERVAL_SECONDS = 0.5
# Label sets of the per-destination queue gauge kept at most (the busiest destinations).
MAX_DESTINATION_SERIES = 1000


def health_route(db: Database) -> web.RouteDef:
    store = OpsStore(db)

    async def health(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(HEALTH_DB_TIMEOUT_SECONDS):
                await store.ping()
        except Exception as e:  # any failure of the database is "unhealthy", not a 500
            log.warning("health check failed", extra={"error": str(e) or type(e).__name__})
            return web.json_response({"status": "unavailable"}, status=503)
        return web.json_response({"status": "ok"})

    return web.get("/health", health)


async def refresh_database_gauges(db: Database, metrics: Metrics, clock: Clock = SYSTEM_CLOCK) -> None:
    """Read the inbox age and the per-destination queue depths into their gauges."""
    store = OpsStore(db)
    oldest = await store.oldest_inbox_received_ms()
    age = max(0.0, (clock.time_ms() - oldest) / 1000) if oldest is not None else 0.0
    metrics.inbox_oldest_age.set(age)
    depths = await store.outbound_queue_depths(MAX_DESTINATION_SERIES)
    gauge = metrics.outbound_destination_queue_depth
    gauge.clear()  # destinations whose queue emptied disappear instead of sticking
    for (dest, kind), count in depths.items():
        gauge.labels(dest, kind).set(count)


def create_metrics_app(db: Database, metrics: Metrics, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    """The app of the metrics listener: ``GET /metrics`` and ``GET /health``."""
    app = web.Application()
    one_at_a_time = asyncio.Lock()

    async def scrape(request: web.Request) -> web.Response:
        async with one_at_a_time:
            try:
                async with asyncio.timeout(SCRAPE_DB_TIMEOUT_SECONDS):
                    await refresh_database_gauges(db, metrics, clock)
            except Exception as e:
                log.warning("metrics: database gauges not refreshed", extra={"error": str(e) or type(e).__name__})
            # Off the loop: the registry's own locks make reading it from a thread safe.
            body = await asyncio.to_thread(generate_latest, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.add_routes([web.get("/metrics", scrape), health_route(db)])
    return app


class LoopLagProbe:
    """A task that sleeps ``interval`` seconds at a time and records how late it wakes."""

    def __init__(
        self, metrics: Metrics, interval: float = LAG_PROBE_INTERVAL_SECONDS, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._metrics = metrics
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-loop-lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        clock = self._clock
        while True:
            before = clock.monotonic()
            await clock.sleep(self._interval)
            lag = max(0.0, clock.monotonic() - before - self._interval)
            self._metrics.event_loop_lag.set(lag)
            self._metrics.event_loop_lag_histogram.observe(lag)
