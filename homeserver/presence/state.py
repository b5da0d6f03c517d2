"""The presence state machine, pure (no I/O; every time is passed in, in milliseconds).

Local users (``PresenceTracker.set_local``, ``sync``, ``tick``):

* ``online``, ``unavailable`` or ``offline``, with an optional ``status_msg``;
  ``last_active`` is bumped by activity (a PUT of ``online``, a /sync with
  ``set_presence=online``, an event sent); ``currently_active`` while online and active within the last
  ``ACTIVE_WINDOW_MS``.
* Idle timeout: online and no activity for ``idle_ms`` -> ``unavailable``.
* Offline timeout: not offline, no /sync in flight and none started (nor a PUT) for
  ``offline_ms`` -> ``offline``.

Remote users (``set_remote``): what their server last said, at most ``max_remote`` of
them; past that the least recently updated is forgotten (counted in ``evicted``). One not
heard of for ``remote_timeout_ms`` goes offline (their server re-sends the presence of
its online users more often than that, ``FEDERATION_PING_MS``), and is forgotten after
another such period (unknown is shown as offline).

A change that a client or another server would see (presence, status message, whether
currently active) takes the next position of the presence stream (``position``); a
bare ``last_active`` bump takes none, so /sync long-polls are not woken by every sync.
Positions are wall-clock milliseconds made strictly increasing, so tokens handed out
before a restart still order before every change after it (the states live in memory).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

PRESENCE_STATES = ("online", "unavailable", "offline")
# Active within this window while online: currently_active (Synapse uses one minute too).
ACTIVE_WINDOW_MS = 60_000
# Remote users not heard of for this long go offline; ours are re-sent more often (the
# figures Synapse uses).
REMOTE_TIMEOUT_MS = 30 * 60_000
FEDERATION_PING_MS = 25 * 60_000


class KEEP:
    """``set_local(status_msg=KEEP)``: leave the status message as it is."""


@dataclass(frozen=True, slots=True)
class UserPresence:
    user_id: str
    presence: str = "offline"
    status_msg: str | None = None
    last_active_ms: int = 0  # 0: never seen active
    currently_active: bool = False
    position: int = 0  # of the last visible change
    last_seen_ms: int = 0  # remote users: the last update received (remote timeout)

    def visible(self) -> tuple[str, str | None, bool]:
        return self.presence, self.status_msg, self.currently_active

    def content(self, now_ms: int) -> dict[str, Any]:
        """The fields of an ``m.presence`` event's content (and of an EDU's ``push`` entry,
        with ``user_id``; of GET /status without it)."""
        out: dict[str, Any] = {"presence": self.presence, "currently_active": self.currently_active}
        if self.last_active_ms:
            out["last_active_ago"] = max(0, now_ms - self.last_active_ms)
        if self.status_msg is not None:
            out["status_msg"] = self.status_msg
        return out


class PresenceTracker:
    def __init__(self, *, idle_ms: int, offline_ms: int, max_remote: int,
                 remote_timeout_ms: int = REMOTE_TIMEOUT_MS) -> None:
        self.remote_timeout_ms = remote_timeout_ms
        self.idle_ms = idle_ms
        self.offline_ms = offline_ms
        self.max_remote = max_remote
        self.local: dict[str, UserPresence] = {}
        # Local users: the last /sync start, /sync seen in flight, or PUT (offline timeout).
        self.seen: dict[str, int] = {}
        self.remote: OrderedDict[str, UserPresence] = OrderedDict()  # least recently updated first
        # user -> position of their last visible change, in position order (for /sync).
        self._changes: OrderedDict[str, int] = OrderedDict()
        self.position = 0
        self.evicted = 0

    # ------------------------------------------------------------------ reads

    def get(self, user_id: str) -> UserPresence | None:
        return self.local.get(user_id) or self.remote.get(user_id)

    def changed_since(self, position: int) -> Iterator[UserPresence]:
        """The users whose visible presence changed after ``position``, newest first."""
        for user_id in reversed(self._changes):
            if self._changes[user_id] <= position:
                return
            found = self.get(user_id)
            if found is not None:
                yield found

    # ------------------------------------------------------------------ local users

    def set_local(
        self, user_id: str, presence: str, now_ms: int, *, status_msg: str | type[KEEP] | None = None,
        active: bool = False, seen: bool = True,
    ) -> UserPresence | None:
        """Set a local user's presence (PUT /status, /sync's set_presence); ``active``
        bumps last_active; ``seen`` counts for the offline timeout. The new state when a
        visible change, else None."""
        if presence not in PRESENCE_STATES:
            raise ValueError(presence)
        old = self.local.get(user_id) or UserPresence(user_id)
        new = replace(old, presence=presence)
        if status_msg is not KEEP:
            assert status_msg is None or isinstance(status_msg, str)
            new = replace(new, status_msg=status_msg)
        if active:
            new = replace(new, last_active_ms=now_ms)
        if seen:
            self.seen[user_id] = now_ms
        return self._put_local(old, new, now_ms)

    def sync(self, user_id: str, set_presence: str, now_ms: int) -> UserPresence | None:
        """A /sync started with ``set_presence``: ``online`` marks the user online and
        active; ``unavailable`` marks them unavailable; ``offline`` changes nothing (the
        client is not marked online)."""
        if set_presence == "online":
            return self.set_local(user_id, "online", now_ms, status_msg=KEEP, active=True)
        if set_presence == "unavailable":
            return self.set_local(user_id, "unavailable", now_ms, status_msg=KEEP)
        return None

    def activity(self, user_id: str, now_ms: int) -> UserPresence | None:
        """A local user did something (sent an event): last_active is bumped, and one who
        is unavailable comes back online (as Synapse does); an offline or unknown user is
        left alone."""
        old = self.local.get(user_id)
        if old is None or old.presence == "offline":
            return None
        return self._put_local(old, replace(old, presence="online", last_active_ms=now_ms), now_ms)

    def tick(self, now_ms: int, syncing: Callable[[str], bool]) -> list[UserPresence]:
        """Apply the timeouts to local users (``syncing(user)``: a /sync of theirs is in
        flight, which counts as seen now) and to remote users. The users whose visible
        presence changed."""
        changed: list[UserPresence] = []
        due: list[tuple[UserPresence, str]] = []
        seen = self.seen
        for user_id, old in self.local.items():  # no object made unless a timeout is due
            if old.presence == "offline":
                continue
            if syncing(user_id):
                seen[user_id] = now_ms
            if now_ms - seen.get(user_id, 0) >= self.offline_ms:
                due.append((old, "offline"))
            elif old.presence == "online" and now_ms - old.last_active_ms >= self.idle_ms:
                due.append((old, "unavailable"))
            elif old.currently_active and now_ms - old.last_active_ms >= ACTIVE_WINDOW_MS:
                due.append((old, old.presence))
        for old, presence in due:
            result = self._put_local(old, replace(old, presence=presence), now_ms)
            if result is not None:
                changed.append(result)
        # Remote users, least recently heard of first: offline after the timeout, then forgotten.
        while self.remote:
            user_id, old = next(iter(self.remote.items()))
            if now_ms - old.last_seen_ms < self.remote_timeout_ms:
                break
            del self.remote[user_id]
            if old.presence == "offline":
                self._changes.pop(user_id, None)
                continue
            gone = replace(old, presence="offline", currently_active=False, last_seen_ms=now_ms,
                           position=self._advance(user_id, now_ms))
            self.remote[user_id] = gone
            changed.append(gone)
        return changed

    def _put_local(self, old: UserPresence, new: UserPresence, now_ms: int) -> UserPresence | None:
        new = replace(new, currently_active=new.presence == "online"
                      and now_ms - new.last_active_ms < ACTIVE_WINDOW_MS)
        if new.visible() == old.visible() and old.position:
            self.local[new.user_id] = new
            return None
        new = replace(new, position=self._advance(new.user_id, now_ms))
        self.local[new.user_id] = new
        return new

    # ------------------------------------------------------------------ remote users

    def set_remote(
        self, user_id: str, presence: str, now_ms: int, *, status_msg: str | None = None,
        last_active_ago: int | None = None, currently_active: bool = False,
    ) -> UserPresence | None:
        """What a user's server said about them; the new state when a visible change."""
        if presence not in PRESENCE_STATES:
            raise ValueError(presence)
        old = self.remote.pop(user_id, None)
        last_active = now_ms - max(0, last_active_ago) if last_active_ago is not None else 0
        new = UserPresence(user_id, presence, status_msg, last_active, currently_active,
                           old.position if old is not None else 0, now_ms)
        changed = old is None or new.visible() != old.visible()
        if changed:
            new = replace(new, position=self._advance(user_id, now_ms))
        self.remote[user_id] = new
        while len(self.remote) > self.max_remote:
            gone, _ = self.remote.popitem(last=False)
            self._changes.pop(gone, None)
            self.evicted += 1
        return new if changed else None

    def _advance(self, user_id: str, now_ms: int) -> int:
        self.position = max(self.position + 1, now_ms)
        self._changes.pop(user_id, None)
        self._changes[user_id] = self.position
        return self.position
