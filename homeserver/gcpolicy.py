"""Full garbage collections kept off the request path.

CPython's cyclic collector stops the process while it walks every tracked object. The
young generations are small and cheap; a full collection walks everything, and with the
worker's caches warm that is 50-100 ms on this machine: a /send arriving then waits for it.
Answer first, work later, applied to the collector:

- At start-up, what the server built to run (modules, classes, routes) is moved out of the
  collector's sight (``gc.freeze``): it lives as long as the process, and walking it again
  on every full collection bought nothing.
- Young collections stay automatic (generation 1 more often than CPython's default, so each
  is shorter). Full collections are not: they run when the server is quiet (no /send
  answered for ``QUIET_SECONDS`` and the inbound worker idle), and at the latest
  ``MAX_INTERVAL_SECONDS`` after the last one, busy or not, so cyclic garbage that outlived
  the young generations is still reclaimed. Only cycles wait for a full collection:
  everything else is freed by reference counting at once.
- While a /send is answered no collection runs at all (``collections_paused``): what is due
  runs on the loop's next turn, after the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator

from homeserver.util.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# Generation 1 is collected after this many generation 0 collections (CPython: 10). Each
# collection of it walks what survived the generation 0 collections since the last one:
# with the worker's caches filling, 1-5 ms (up to 9) at CPython's 10, 0.6 ms (up to 5)
# at 2, for the same total; a /send arriving waits for whichever is running.
YOUNG_THRESHOLD = 2
# A full collection is due after this many generation 1 collections: CPython's own trigger
# (after 10 x 10 generation 0 collections), minus its "long-lived objects grew by 25%" rule.
DUE_AFTER_YOUNG = 100 // YOUNG_THRESHOLD
# Quiet: no /send answered for this long and the worker idle.
QUIET_SECONDS = 0.5
# A due full collection runs after at most this long, quiet or not.
MAX_INTERVAL_SECONDS = 60.0
# How often the policy looks.
TICK_SECONDS = 0.25
# The generation 2 threshold while the policy runs: never reached in practice.
_NEVER = 1 << 30


class CollectorPolicy:
    """Runs full collections when ``quiet()`` says so, or when one is overdue."""

    def __init__(
        self,
        quiet: Callable[[], bool],
        *,
        collect: Callable[[int], int] = gc.collect,
        clock: Clock = SYSTEM_CLOCK,
        max_interval: float = MAX_INTERVAL_SECONDS,
    ) -> None:
        self._quiet = quiet
        self._collect = collect
        self._clock = clock
        self._max_interval = max_interval
        self._last_full = clock.monotonic()
        self._young_since_full = 0
        self._saved: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.full_collections = 0

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        threshold = gc.get_threshold()
        self._saved = (threshold[0], threshold[1], threshold[2])
        gc.set_threshold(threshold[0], YOUNG_THRESHOLD, _NEVER)
        gc.callbacks.append(self._on_gc)
        self._last_full = self._clock.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gc-policy")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info.get("generation") == 1:
            self._young_since_full += 1

    def due(self) -> bool:
        return self._young_since_full >= DUE_AFTER_YOUNG

    def tick(self) -> bool:
        """One look: run a full collection if one is due and the server is quiet, or if it
        is overdue. Returns whether it ran."""
        if not self.due():
            return False
        overdue = self._clock.monotonic() - self._last_full >= self._max_interval
        if not overdue and not self._quiet():
            return False
        started = time.perf_counter()
        collected = self._collect(2)
        self._young_since_full = 0
        self._last_full = self._clock.monotonic()
        self.full_collections += 1
        log.debug("full garbage collection", extra={
            "collected": collected, "overdue": overdue, "ms": round((time.perf_counter() - started) * 1000, 1),
        })
        return True

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(TICK_SECONDS)
            try:
                self.tick()
            except Exception:  # pragma: no cover - never let the policy die silently
                log.exception("garbage collection policy failed")


class _Paused:
    depth = 0  # requests being answered
    ours = False  # the collector was enabled and we disabled it


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No collection, young or full, while a /send is answered (the door allocates most of
    what triggers them: a 50-PDU body parsed is thousands of objects, and a collection of
    generation 1 took up to 5 ms inside it). The collector comes back on the loop's next
    turn, after the reply was handed to the transport, and collects then what is due."""
    if _Paused.depth == 0 and gc.isenabled():
        gc.disable()
        _Paused.ours = True
    _Paused.depth += 1
    try:
        yield
    finally:
        _Paused.depth -= 1
        if _Paused.depth == 0 and _Paused.ours:
            asyncio.get_running_loop().call_soon(_resume)


def _resume() -> None:
    if _Paused.depth == 0 and _Paused.ours:
        _Paused.ours = False
        gc.enable()
