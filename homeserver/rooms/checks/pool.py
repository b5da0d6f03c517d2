"""Steps 1-3 of the PDU checks (format, signatures, content hash) in a helper process.

Those steps need no room state and no database, only the PDU and its signers' keys, and
they are most of the CPU an inbound event costs (the ed25519 verification alone is about
a sixth of a millisecond on a small machine). Running them in one helper process, a
batch at a time, leaves the event loop of the server free for /send and for what only it
can do (auth against room state, persistence), so the two run on two cores.

The helper gets plain data (the PDU's JSON text, its room version, the signers' verify
keys as bytes) and answers one verdict per PDU. The parent resolves keys first through
its key cache (that may need the network; the helper never does). The pool is started on
the first large batch only: a server that receives a trickle checks inline and never
starts a process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence

from nacl.signing import VerifyKey

from homeserver.events.canonical import loads_exact
from homeserver.events.errors import EventFormatError, SignatureError
from homeserver.events.format import check_pdu_format
from homeserver.events.signing import HashCheck, check_content_hash, verify_event_signatures
from homeserver.events.versions import get_room_version

log = logging.getLogger(__name__)

# One PDU to check: its JSON text, its room version, and {server: {key ID: key bytes}}.
CheckItem = tuple[str, str, dict[str, dict[str, bytes]]]
# The verdict: ("ok" | "redact" | "format" | "signature", detail).
Verdict = tuple[str, str]

_KEYS: dict[bytes, VerifyKey] = {}


def _verify_key(raw: bytes) -> VerifyKey:
    key = _KEYS.get(raw)
    if key is None:
        if len(_KEYS) > 10_000:
            _KEYS.clear()
        key = _KEYS[raw] = VerifyKey(raw)
    return key


# Helpers run at a lower CPU priority than the server: their work is the backlog's, and
# the server's event loop answers remote servers. The idle scheduling class, where the
# system has it: a nice-10 task still gets whole time slices of its own (Linux's EEVDF
# scheduler makes nice a matter of how often, not how long), and a /send being answered on
# that core waited for them; an idle-class task gives way at once to any other.
HELPER_NICENESS = 10
HELPER_POLICY: int | None = getattr(os, "SCHED_IDLE", None)


def _watch_parent(parent: int) -> None:
    """Runs in each helper: yield the CPU to the server first, and exit as soon as the
    server is gone (even if it was killed)."""
    with contextlib.suppress(OSError):
        os.nice(HELPER_NICENESS)
    if HELPER_POLICY is not None:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, HELPER_POLICY, os.sched_param(0))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def check_one(item: CheckItem) -> Verdict:
    text, version_id, raw_keys = item
    version = get_room_version(version_id)
    pdu = loads_exact(text)
    try:
        check_pdu_format(pdu, version)
    except EventFormatError as e:
        return "format", str(e)
    keys = {server: {kid: _verify_key(k) for kid, k in by_id.items()} for server, by_id in raw_keys.items()}
    try:
        verify_event_signatures(pdu, version, keys)
    except SignatureError as e:
        return "signature", str(e)
    check, _ = check_content_hash(pdu, version)
    return ("redact" if check is HashCheck.MISMATCH else "ok"), ""


def check_batch(items: Sequence[CheckItem]) -> list[Verdict]:
    """Runs in the helper process: one verdict per item, in order."""
    out: list[Verdict] = []
    for item in items:
        try:
            out.append(check_one(item))
        except Exception as e:  # a malformed PDU must not fail its neighbours
            out.append(("format", f"{type(e).__name__}: {e}"))
    return out


# A batch not checked within this long (a stuck or starved helper) is checked inline.
CHECK_TIMEOUT_SECONDS = 30.0


class CheckPool:
    """A lazily started pool of helper processes running ``check_batch``."""

    def __init__(self, processes: int, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self.processes = processes
        self.timeout = timeout
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.batches = 0  # batches checked in the pool (observability, tests)

    @property
    def enabled(self) -> bool:
        return self.processes > 0

    def _ensure(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn: fresh interpreters, not forks of this process (which has database and
            # executor threads); each watches this process and exits when it is gone.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent, initargs=(os.getpid(),),
            )
        return self._pool

    async def check(self, items: Sequence[CheckItem]) -> list[Verdict]:
        pool = self._ensure()
        try:
            async with asyncio.timeout(self.timeout):
                result = await asyncio.wrap_future(pool.submit(check_batch, list(items)))
        except (concurrent.futures.process.BrokenProcessPool, TimeoutError):
            # A helper died (killed, out of memory) or is stuck: the caller checks inline,
            # and the next batch starts afresh.
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        self.batches += 1
        return result

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

