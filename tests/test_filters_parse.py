"""SQL-like filter strings -> Arrow expressions (shardann.filters)."""

import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shardann.filters import as_attribute_table, compile_filter, filter_mask

TABLE = pa.table({
    "lang": pa.array(["en", "fr", None, "en", "de"]),
    "year": pa.array([2020, 2023, 2024, None, 1999], pa.int64()),
    "score": pa.array([0.5, 1.5, -2.0, 0.0, None], pa.float32()),
    "ok": pa.array([True, False, None, True, False]),
    "tags": pa.array([["news"], [], None, ["news", "x"], [None, "x"]], pa.list_(pa.string())),
    "ts": pa.array([datetime.datetime(2024, 1, d) for d in (1, 5, 9, 13, 17)],
                   pa.timestamp("us")),
    "day": pa.array([datetime.date(2024, 2, d) for d in (1, 2, 3, 4, 5)], pa.date32()),
    "my col": pa.array([1, 2, 3, 4, 5]),
})


def rows(text):
    return np.flatnonzero(filter_mask(compile_filter(text, TABLE.schema), TABLE)).tolist()


@pytest.mark.parametrize("text, expected", [
    ("lang = 'en'", [0, 3]),
    ("lang != 'en'", [1, 4]),  # null is not "not en": it fails every comparison
    ("lang <> 'en' OR lang IS NULL", [1, 2, 4]),
    ("year >= 2023 AND lang = 'fr'", [1]),
    ("2023 <= year", [1, 2]),
    ("NOT (year < 2021)", [1, 2]),
    ("year IN (1999, 2024, 2.5)", [2, 4]),
    ("lang NOT IN ('en', 'de')", [1]),
    ("year BETWEEN 2020 AND 2023", [0, 1]),
    ("year IS NULL", [3]),
    ("score IS NOT NULL AND score < 0.25", [2, 3]),
    ("score > -1.5e0", [0, 1, 3]),
    ("score = -2", [2]),
    ("ok", [0, 3]),
    ("ok = FALSE", [1, 4]),
    ("tags CONTAINS 'news'", [0, 3]),
    ("tags contains 'x' AND NOT tags CONTAINS 'news'", [4]),
    ("ARRAY_CONTAINS(tags, 'x')", [3, 4]),
    ("lang LIKE 'e%'", [0, 3]),
    ("ts >= '2024-01-09' AND ts < TIMESTAMP '2024-01-15'", [2, 3]),
    ("day = '2024-02-03'", [2]),
    ('"my col" > 3', [3, 4]),
    ("year > score", [0, 1, 2]),
])
def test_filters_select_rows(text, expected):
    assert rows(text) == expected


@pytest.mark.parametrize("text, message", [
    ("lnag = 'en'", r"unknown column 'lnag' .*at position 0"),
    ("year >= 2023 AND lang = 'en' AND yr > 1", r"unknown column 'yr' .*at position 33"),
    ("year = 'x'", r"'year' is int64; it cannot be compared with .'x'. \(string\) at position 7"),
    ("lang > 3", r"column 'lang' is string"),
    ("lang = = 'en'", r"syntax error at line 1, column 8"),
    ("lang = 'en' year", r"unexpected 'year' at position 12"),
    ("tags = 'x'", r"'tags' is a list; use CONTAINS"),
    ("lang CONTAINS 'x'", r"CONTAINS needs a list<string> column; 'lang'"),
    ("ts > 'yesterday'", r"'yesterday' is not a date/time"),
    ("year = NULL", r"IS NULL"),
    ("year", r"not a condition"),
    ("year + 1 > 2", r"expected a column name|unsupported"),
    ("", r"empty"),
])
def test_bad_filters_name_the_column_or_position(text, message):
    with pytest.raises(ValueError, match=message):
        compile_filter(text, TABLE.schema)


def test_expressions_pass_through_and_are_checked():
    expr = (pc.field("year") > 2020) & (pc.field("lang") == "fr")
    assert compile_filter(expr, TABLE.schema) is expr
    assert np.flatnonzero(filter_mask(expr, TABLE)).tolist() == [1]
    with pytest.raises(ValueError, match="does not apply"):
        compile_filter(pc.field("nope") == 1, TABLE.schema)
    with pytest.raises(ValueError, match="not a condition"):
        compile_filter(pc.field("year") + 1, TABLE.schema)
    with pytest.raises(TypeError, match="filter must be"):
        compile_filter(3, TABLE.schema)
    with pytest.raises(ValueError, match="no attributes"):
        compile_filter("year > 1", None)
    assert compile_filter(None, None) is None


def test_attribute_tables_are_normalised():
    t = as_attribute_table({"a": pa.array(["x", "y"]).dictionary_encode(),
                            "b": pa.array([["p"], []], pa.large_list(pa.large_string())),
                            "c": [None, None]}, 2)
    assert t.schema == pa.schema([("a", pa.string()), ("b", pa.list_(pa.string())),
                                  ("c", pa.string())])
    with pytest.raises(ValueError, match="'m' has type struct"):
        as_attribute_table({"m": [{"x": 1}, {"x": 2}]}, 2)
    with pytest.raises(ValueError, match="one row per vector"):
        as_attribute_table({"a": [1]}, 2)
