"""storage/search.py's ``search_words``: the words of a search term, safe to write into a
PostgreSQL tsquery (word characters only)."""

from __future__ import annotations

import re

from homeserver.storage.search import MAX_WORDS, search_words


def test_search_words() -> None:
    assert search_words("Hello, World! hello") == ["hello", "world"]
    assert search_words("it's 'quoted' & (x | !y) :*") == ["it", "s", "quoted", "x", "y"]
    assert search_words("Grüße ключ 数字") == ["grüße", "ключ", "数字"]
    assert search_words("   ") == []
    assert len(search_words(" ".join(f"w{i}" for i in range(100)))) == MAX_WORDS
    for word in search_words("a'b\\c\"d;e--f/*g*/"):
        assert re.fullmatch(r"\w+", word)
