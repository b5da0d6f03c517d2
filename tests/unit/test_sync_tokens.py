"""Sync tokens: the five-stream form round-trips and the older three- and four-stream forms
still parse."""

from __future__ import annotations

import pytest

from homeserver.client_api.tokens import SyncToken, parse_page_token, parse_sync_token
from homeserver.errors import MatrixError


def test_round_trip_and_old_form() -> None:
    token = SyncToken(12, 3, 1_700_000_000_000, 7, 5, 9)
    assert token.encode() == "s12_3_1700000000000_7_5_t9"
    assert parse_sync_token(token.encode()) == token
    assert parse_sync_token("s12_3_1700000000000_7") == SyncToken(12, 3, 1_700_000_000_000, 7, 0)
    assert parse_sync_token("s12_3_1700000000000") == SyncToken(12, 3, 1_700_000_000_000, 0)
    assert parse_page_token("s12_3_1700000000000_7") == 12 == parse_page_token("s12_3_1700000000000")


@pytest.mark.parametrize(
    "raw", ["s1_2", "s1_2_3_4_5_6", "s1_2_3_", "x1_2_3_4", "s1_2_3_-4", "s1_2_3_4_t", "s1_2_3_4_t-1"]
)
def test_bad_tokens(raw: str) -> None:
    with pytest.raises(MatrixError):
        parse_sync_token(raw)
