"""Steps 4-6 of the checks on receipt of a PDU: the event's outcome and the state before
it. Runs under the room lock, after the network work (auth events, prev events) is done.

4. auth against the event's own auth events, else rejected;
5. auth against the state before the event, else rejected;
6. auth against the current state, else soft-failed.
"""

from __future__ import annotations

from collections.abc import Mapping

from homeserver.events.auth import auth_types_for_event, check_auth_rules
from homeserver.events.errors import AuthError
from homeserver.events.event import Event, StateKey
from homeserver.federation.pipeline.cache import EventCache
from homeserver.rooms.checks.auth import CREATE, auth_events_rejection
from homeserver.rooms.checks.receipt import Dropped
from homeserver.rooms.persist import EventPersister, PersistError
from homeserver.storage.events import EventStore, Outcome


class Decider:
    def __init__(self, store: EventStore, persister: EventPersister, cache: EventCache) -> None:
        self._store = store
        self._persister = persister
        self._cache = cache

    async def decide(
        self, event: Event, prev_states: list[Mapping[StateKey, str]] | None
    ) -> tuple[Outcome, str | None, dict[StateKey, str]]:
        """(outcome, rejection or soft-failure reason, state before the event).
        ``prev_states``: the states after the prev events when some were fetched (see
        ``state.py``), else None: the stored ones are used."""
        version = event.room_version
        if event.type == "m.room.create" and event.state_key == "":
            try:
                check_auth_rules(event, {})
            except AuthError as e:
                return Outcome.REJECTED, str(e), {}
            return Outcome.ACCEPTED, None, {}
        # The state before the event: from its prevs' stored states, or the fetched ones.
        try:
            cached = [self._cache.state_after.peek(p) for p in event.prev_events]
            if prev_states is None and len(cached) == 1 and cached[0] is not None:
                state_before = dict(cached[0])  # the linear case: no look-up
            elif prev_states is None:
                state_before = await self._persister.compute_state_before(version, event.prev_events)
                if len(event.prev_events) == 1:
                    # Forks citing this prev find it cached (no look-up waits for deferred writes).
                    self._cache.state_after[event.prev_events[0]] = dict(state_before)
            else:
                state_before = await self._persister.resolve(version, prev_states)
        except PersistError as e:
            raise Dropped(f"no state before the event: {e}") from None
        # 4. Auth against the event's own auth events, else rejected.
        auth = await self._cache.get_events(event.auth_events)
        create: dict[StateKey, Event] = {}
        if event.room_version.room_id_is_create_hash:
            await self._cache.add_create(event, create)
        reason = auth_events_rejection(event, auth, create.get(CREATE))
        if reason is not None:
            return Outcome.REJECTED, reason, state_before
        # 5. Auth against the state before the event, else rejected.
        try:
            check_auth_rules(event, await self._auth_state(event, state_before))
        except AuthError as e:
            return Outcome.REJECTED, str(e), state_before
        # 6. Auth against the current state, else soft-failed. When the event's prevs are
        # the room's forward extremities, the current state is the state before it.
        extremities = await self._persister.forward_extremities(event.room_id)
        if extremities != set(event.prev_events):
            # The persister's cached head: no read that waits for deferred writes (every
            # event of a room with many forks comes here).
            current: Mapping[StateKey, str] = await self._persister.current_state(event.room_id)
            if current != state_before:
                # The spec's current state is "the resolved state across all forward
                # extremities"; once this event is accepted its branch is one of them (as
                # in Synapse). A sender whose join reached us only as this event's prev
                # (say, through the state fetched for a gap) is joined there; a banned
                # sender citing old events stays banned (state resolution orders the ban
                # after the join it follows).
                try:
                    current = await self._persister.resolve(version, [current, state_before])
                except PersistError:
                    pass
            try:
                check_auth_rules(event, await self._auth_state(event, current))
            except AuthError as e:
                return Outcome.SOFT_FAILED, str(e), state_before
        return Outcome.ACCEPTED, None, state_before

    async def _auth_state(self, event: Event, state: Mapping[StateKey, str]) -> dict[StateKey, Event]:
        wanted = auth_types_for_event(event) | {CREATE}
        ids = {k: state[k] for k in wanted if k in state}
        found = await self._cache.get_events(ids.values())
        return {k: found[i][0] for k, i in ids.items() if i in found}
