"""Canonical JSON against the worked examples of the spec's appendix (appendices.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from homeserver.events.canonical import canonical_json, check_canonical_values, loads
from homeserver.events.errors import EventFormatError

# The appendix's examples, copied from the spec (Apache-2.0) into the repository.
EXAMPLES_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "canonical-json-examples.md"


def _examples() -> list[tuple[str, str]]:
    section = EXAMPLES_FILE.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    assert len(blocks) % 2 == 0 and blocks, "expected input/output pairs"
    return [(blocks[i], blocks[i + 1].strip()) for i in range(0, len(blocks), 2)]


EXAMPLES = _examples()


def test_spec_has_examples() -> None:
    assert len(EXAMPLES) >= 7


@pytest.mark.parametrize(("given", "expected"), EXAMPLES)
def test_appendix_example(given: str, expected: str) -> None:
    assert canonical_json(loads(given)).decode("utf-8") == expected


@pytest.mark.parametrize(
    "value",
    [{"a": 1.5}, {"a": [1, 2.0]}, {"a": 2**53}, {"a": -(2**53)}],
)
def test_floats_and_out_of_range_integers_refused(value: object) -> None:
    with pytest.raises(EventFormatError):
        check_canonical_values(value)


def test_integer_range_edges_allowed() -> None:
    check_canonical_values({"max": 2**53 - 1, "min": -(2**53) + 1, "nested": [{"ok": True}]})
