"""Byte counts for people and from people (``shardann._text``)."""

import pytest

from shardann._text import format_bytes, parse_bytes, parse_count


@pytest.mark.parametrize("n,text", [
    (0, "0 B"), (1023, "1,023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 2**20, "5.0 MiB"), (3 * 2**30 // 2, "1.5 GiB"), (2**40, "1.0 TiB"),
    (2048 * 2**40, "2,048.0 TiB"), (-2048, "-2.0 KiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("text,n", [
    ("64GiB", 64 * 2**30), ("64 GiB", 64 * 2**30), ("2GB", 2 * 10**9), ("500M", 5 * 10**8),
    ("1.5KiB", 1536), ("1e9", 10**9), ("4_096", 4096), (4096, 4096), (2.5e3, 2500),
])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["lots", "64XB", "0", "-1GiB", "nanGiB", ""])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


@pytest.mark.parametrize("text,n", [("1e9", 10**9), ("1,000,000", 10**6), ("2_500", 2500),
                                    (7, 7), (3.0, 3)])
def test_parse_count(text, n):
    assert parse_count(text) == n


@pytest.mark.parametrize("text", ["ten", "0", "1.5", "-3", "inf"])
def test_parse_count_rejects(text):
    with pytest.raises(ValueError, match="whole number"):
        parse_count(text)
