"""Synapse and ours can talk at all: keys both ways and an X-Matrix request from Synapse.

- Synapse, asked as a notary (``/_matrix/key/v2/query``), fetches our server keys over TLS
  and returns them with our signature intact.
- Our keyring fetches Synapse's key and it verifies Synapse's own key document.
- A Synapse user's profile query about one of our users reaches our federation listener as a
  signed X-Matrix request, which we authenticate and answer.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from tests.interop.conftest import OurServer, new_user
from tests.interop.synapse import SYNAPSE_VERSION, SynapseServer

pytestmark = pytest.mark.interop


async def test_keys_and_xmatrix_both_ways(
    synapse: SynapseServer, ours: tuple[OurServer, OurServer], http: aiohttp.ClientSession,
    test_ca: tuple[Path, Path], synapse_version: str,
) -> None:
    assert synapse_version == SYNAPSE_VERSION  # the version the README's figures name
    a, _ = ours
    ctx = ssl.create_default_context(cafile=str(test_ca[0]))
    # 1. Synapse fetches our keys (as a notary, over its federation listener).
    # Naming the key ID makes a cache miss, which Synapse fills from our server.
    ours_key = a.server.services.signing_key
    url = f"https://127.0.0.1:{synapse.fed_port}/_matrix/key/v2/query"
    now_ms = int(time.time() * 1000)
    query = {"server_keys": {a.name: {ours_key.key_id: {"minimum_valid_until_ts": now_ms}}}}
    async with http.post(url, json=query, ssl=ctx) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    [doc] = [k for k in body["server_keys"] if k["server_name"] == a.name]
    assert doc["verify_keys"][ours_key.key_id]["key"] == ours_key.verify_key_base64
    verify_key = decode_verify_key_bytes(ours_key.key_id, decode_base64(ours_key.verify_key_base64))
    verify_signed_json(doc, a.name, verify_key)  # our own signature survived the notary
    assert synapse.server_name in doc["signatures"]  # and Synapse countersigned it

    # 2. Our keyring fetches Synapse's key; it verifies Synapse's published key document.
    async with http.get(f"https://127.0.0.1:{synapse.fed_port}/_matrix/key/v2/server", ssl=ctx) as r:
        published = await r.json()
    [key_id] = published["verify_keys"]
    synapse_key = await a.server.services.keyring.get_verify_key(synapse.server_name, key_id)
    verify_signed_json(published, synapse.server_name, synapse_key)

    # 3. Synapse signs a federation request (profile query) that our X-Matrix door accepts.
    local = await new_user(http, a.client_url, "smoke")
    await local.request("PUT", f"/_matrix/client/v3/profile/{local.user_id}/displayname",
                        json={"displayname": "Smoke Test"})
    remote = await new_user(http, synapse.client_url)
    profile = await remote.request("GET", f"/_matrix/client/v3/profile/{local.user_id}")
    assert profile.get("displayname") == "Smoke Test"
