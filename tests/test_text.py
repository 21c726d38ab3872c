"""Byte counts for people (``shardann._text.format_bytes``)."""

import pytest

from shardann._text import format_bytes


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (1023, "1,023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 2**20, "5.0 MiB"), (3 * 2**30 // 2, "1.5 GiB"), (2**40, "1.0 TiB"),
    (2048 * 2**40, "2,048.0 TiB"), (-2048, "-2.0 KiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text
