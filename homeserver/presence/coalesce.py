"""Rate limit and coalescing of outbound presence, pure (monotonic seconds passed in).

Each (destination, user) pair is sent at most one update per ``interval`` seconds. An
update offered sooner is held as pending (only the pair: the state sent is the user's
latest when it is due, so the latest state wins and several changes cost one update).
At most ``max_pending`` pairs are held; past that the oldest is dropped (``dropped``).
The time of the last send is remembered for at most ``max_remembered`` pairs (a pair
forgotten early can only be sent one update sooner).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

Pair = tuple[str, str]  # (destination, user)


class Coalescer:
    def __init__(self, interval: float, *, max_pending: int = 100_000, max_remembered: int = 100_000) -> None:
        self.interval = interval
        self.max_pending = max_pending
        self.max_remembered = max_remembered
        self._last_sent: OrderedDict[Pair, float] = OrderedDict()  # oldest send first
        self._pending: OrderedDict[Pair, float] = OrderedDict()  # pair -> when it may go
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, user_id: str, destinations: Iterable[str], now: float) -> list[str]:
        """``user_id`` changed: the destinations to send to now; the others are pending."""
        now_dests: list[str] = []
        for dest in destinations:
            pair = (dest, user_id)
            if pair in self._pending:
                continue  # already due later, with whatever is latest then
            last = self._last_sent.get(pair)
            if last is None or now - last >= self.interval:
                self._sent(pair, now)
                now_dests.append(dest)
                continue
            self._pending[pair] = last + self.interval
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.dropped += 1
        return now_dests

    def due(self, now: float) -> dict[str, list[str]]:
        """The pending pairs whose time has come, as destination -> users (now sent)."""
        out: dict[str, list[str]] = {}
        for pair, when in list(self._pending.items()):
            if when <= now:
                del self._pending[pair]
                self._sent(pair, now)
                out.setdefault(pair[0], []).append(pair[1])
        return out

    def next_due(self) -> float | None:
        return min(self._pending.values(), default=None)

    def _sent(self, pair: Pair, now: float) -> None:
        self._last_sent.pop(pair, None)
        self._last_sent[pair] = now
        # Forget sends older than the interval (they no longer limit anything), and past
        # the bound the oldest.
        while self._last_sent:
            oldest, when = next(iter(self._last_sent.items()))
            if now - when >= self.interval or len(self._last_sent) > self.max_remembered:
                del self._last_sent[oldest]
            else:
                break
