"""Element's encryption between a user on Synapse and a user on ours, with Element's own SDK
(tests/e2e_js, the scenarios of tests/integration/test_element_e2ee.py):

- the two-user exchange in a new encrypted room, whichever side creates it and invites;
- the encrypted direct chat, a second device of the Synapse user, and cross-signing seen
  across the two servers, with our user creating the room.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.element import assert_passed, ensure_installed, run_scenario, step, user
from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SynapseServer

pytestmark = pytest.mark.interop

PASSWORD = "interop-pass-1"  # tests/interop/client.py's


@pytest.fixture(scope="session")
def node() -> Path:
    return ensure_installed()


async def users(http: aiohttp.ClientSession, ours_url: str, synapse_url: str) -> tuple[dict[str, str], dict[str, str]]:
    local, remote = await new_user(http, ours_url), await new_user(http, synapse_url)
    return user(ours_url, local.user_id, PASSWORD), user(synapse_url, remote.user_id, PASSWORD)


@pytest.mark.parametrize("creator", ["ours", "synapse"])
async def test_encrypted_room_with_synapse(
    node: Path, synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, creator: str,
) -> None:
    local, remote = await users(http, ours[0].client_url, synapse.client_url)
    a, b = (local, remote) if creator == "ours" else (remote, local)
    result = await run_scenario(node, "room", a, b)
    step(result, "b accepts invite")
    step(result, "a -> b encrypted")
    step(result, "b -> a encrypted")
    assert_passed(result)


@pytest.mark.parametrize("scenario", ["direct", "second_device", "cross_signing"])
async def test_more_with_synapse(
    node: Path, synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession, scenario: str,
) -> None:
    a, b = await users(http, ours[0].client_url, synapse.client_url)
    if scenario == "direct":
        result = await run_scenario(node, "room", a, b, direct=True)
        assert step(result, "b accepts invite")["invite_is_direct"]
    else:
        result = await run_scenario(node, scenario, a, b)
    assert_passed(result)
