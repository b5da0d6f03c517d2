"""State resolution v1 against Synapse's own (differential): the same forks, the same answer.

Random forks of a room version 1 room (the generator of ``tests/unit/events/test_stateres_v1.py``:
topics, power levels, memberships, join rules and names from several senders on 2-4
branches) are resolved by ``homeserver.events.stateres_v1`` and, in the cached Synapse
virtualenv of the interop suite, by ``synapse.state.v1.resolve_events_with_store``. Every
case must give the same state map. This checks the readings the spec leaves open (per-pass
snapshots, the fallback when no event passes) and the auth rules both apply on the way.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from homeserver.events.stateres_v1 import resolve_state_v1
from tests.unit.events.test_stateres_v1 import V1, make_room, random_branch

pytestmark = pytest.mark.interop

CASES = 300

SYNAPSE_SIDE = """
import asyncio, json, sys
import synapse.event_auth  # noqa: F401 (first: synapse.state and event_auth import each other)
from synapse.api.room_versions import RoomVersions
from synapse.events import make_event_from_dict
from synapse.state.v1 import resolve_events_with_store

data = json.load(sys.stdin)
out = []
for case in data["cases"]:
    events = {p["event_id"]: make_event_from_dict(p, RoomVersions.V1) for p in case["events"]}

    async def factory(ids, events=events):
        return {i: events[i] for i in ids if i in events}

    sets = [{(k[0], k[1]): v for k, v in s} for s in case["sets"]]
    res = asyncio.run(resolve_events_with_store(case["room_id"], RoomVersions.V1, sets, None, factory))
    out.append(sorted([list(k), v] for k, v in res.items()))
json.dump(out, sys.stdout)
"""


def test_same_result_as_synapse(synapse_python: Path) -> None:
    rnd = random.Random(24)
    cases, ours = [], []
    for _ in range(CASES):
        room, base = make_room()
        branches = rnd.randrange(2, 5)
        states = [random_branch(rnd, base, f"b{i}x", rnd.randrange(1, 7)).state for i in range(branches)]
        ours.append(sorted([list(k), v] for k, v in resolve_state_v1(V1, states, room.events).items()))
        cases.append({
            "room_id": room.room_id,
            # Synapse's event type wants hashes and signatures (resolution checks neither).
            "events": [{"hashes": {"sha256": "unchecked"}, "signatures": {}, **e.pdu}
                       for e in room.events.values()],
            "sets": [[[list(k), v] for k, v in s.items()] for s in states],
        })
    proc = subprocess.run([str(synapse_python), "-c", SYNAPSE_SIDE], input=json.dumps({"cases": cases}),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout)
    differing = [i for i in range(CASES) if ours[i] != theirs[i]]
    assert not differing, f"{len(differing)} of {CASES} differ, first: case {differing[0]}"
