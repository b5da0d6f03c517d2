"""Server name grammar (appendices.md, "Server Name")."""

from __future__ import annotations

import pytest

from homeserver.events.identifiers import is_valid_server_name


@pytest.mark.parametrize(
    "name",
    [
        "matrix.org",
        "matrix.org:8888",
        "1.2.3.4",
        "1.2.3.4:1234",
        "[1234:5678::abcd]",
        "[1234:5678::abcd]:5678",
        "localhost",
        "localhost:8448",
        "a-b.example",
    ],
)
def test_valid(name: str) -> None:
    assert is_valid_server_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "bad name", "example.org:", "example.org:0", "example.org:65536", "example.org:abc",
     "[1234:5678::abcd", "exa_mple.org", "a" * 256, "@user:example.org"],
)
def test_invalid(name: str) -> None:
    assert not is_valid_server_name(name)
