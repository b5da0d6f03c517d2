"""Users' push rule sets, compiled and cached: what the notification pass evaluates with
and what ``GET /pushrules`` shows. Users with no rules of their own share the
server-default compiled set (``evaluate.DEFAULT_RULES``); the others each have theirs,
compiled on first use and dropped when they change a rule (``invalidate``). The cache is
bounded (least recently used users leave first)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from homeserver.push.evaluate import CompiledRules
from homeserver.push.rules import default_push_rules, ruleset
from homeserver.storage.push import PushStore

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 50_000


class RuleBook:
    def __init__(self, store: PushStore, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.store = store
        self.cache_size = cache_size
        # user -> their compiled set, or None: the server-default rules.
        self._compiled: OrderedDict[str, CompiledRules | None] = OrderedDict()
        self._generation = 0  # bumped by invalidate: a read begun before it is not cached

    def invalidate(self, user_id: str) -> None:
        self._compiled.pop(user_id, None)
        self._generation += 1

    async def ruleset(self, user_id: str) -> dict[str, list[dict[str, Any]]]:
        """The user's ``global`` rule set, merged, in evaluation order."""
        stored = (await self.store.rules_for_users([user_id])).get(user_id)
        own, overrides = stored if stored is not None else ([], {})
        return ruleset(default_push_rules(user_id), own, overrides)

    async def compiled(self, user_ids: Sequence[str]) -> dict[str, CompiledRules | None]:
        """Each user's compiled rules (None: the server-default ones)."""
        out: dict[str, CompiledRules | None] = {}
        missing: list[str] = []
        for user in user_ids:
            if user in self._compiled:
                self._compiled.move_to_end(user)
                out[user] = self._compiled[user]
            else:
                missing.append(user)
        if missing:
            generation = self._generation
            stored = await self.store.rules_for_users(missing)
            for user in missing:
                found = stored.get(user)
                compiled = None
                if found is not None:
                    try:
                        compiled = CompiledRules.compile(ruleset(default_push_rules(user), found[0], found[1]))
                    except Exception:  # one user's odd rules never stop the pass: defaults for them
                        log.exception("push rules did not compile", extra={"user_id": user})
                out[user] = compiled
                if generation == self._generation:
                    self._compiled[user] = compiled
            while len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
        return out
