"""Iteration helpers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def batch_iter(items: Iterable[T], size: int) -> Iterator[tuple[T, ...]]:
    """``items`` in tuples of ``size`` (the last may be shorter); nothing for no items."""
    if size < 1:
        raise ValueError("size must be at least 1")
    it = iter(items)
    while batch := tuple(islice(it, size)):
        yield batch
