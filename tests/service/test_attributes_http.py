"""Filters and attribute columns over the HTTP API (the FastAPI app over a local
backend, no Ray): JSON ``filter`` and ``columns``, hits carrying their
attributes, adds with attributes, 400 for a bad filter or column; and the
client's round trip of every attribute type."""

import copy
import datetime

import numpy as np
import pyarrow as pa
import pytest
from service_support import D, assert_error, local_client

import shardann
from shardann.service._attrjson import decode_schema, rows_to_table


def _attributes(n, seed=0):
    rng = np.random.default_rng(seed)
    lang = np.array(["en", "de", "fr"], object)[rng.integers(0, 3, n)].tolist()
    lang[::9] = [None] * len(lang[::9])
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return pa.table({
        "lang": pa.array(lang, pa.string()),
        "year": pa.array(rng.integers(2015, 2025, n), pa.int32()),
        "score": rng.random(n),
        "ok": rng.random(n) < 0.5,
        "tags": pa.array([["news"] if i % 3 == 0 else [] for i in range(n)],
                         pa.list_(pa.string())),
        "ts": pa.array([base + datetime.timedelta(hours=int(h))
                        for h in rng.integers(0, 10_000, n)], pa.timestamp("us", tz="UTC")),
    })


@pytest.fixture(scope="module")
def attr_index(svc_data):
    xb, _, xt = svc_data
    index = shardann.IVFPQIndex(D, 16, 8, 8, "l2", seed=0, niter=6, pq_niter=6).train(xt)
    index.add(xb, attributes=_attributes(len(xb)))
    return index


def _search(client, xq, **body):
    return client.post("/v1/search", json={"vectors": xq.tolist(), "k": 5, "nprobe": 8,
                                           **body})


def test_filter_and_columns_over_json(attr_index, svc_data):
    _, xq, _ = svc_data
    want = attr_index.search(xq[:4], 5, nprobe=8, filter="lang = 'en' AND year >= 2018",
                             columns=["lang", "year", "ts", "tags"])
    with local_client(attr_index) as client:
        for q in (xq[:4], xq[:1]):  # a batch, and a single (micro-batched) query
            r = _search(client, q, filter="lang = 'en' AND year >= 2018",
                        columns=["lang", "year", "ts", "tags"])
            assert r.status_code == 200, r.text
            out = r.json()
            n = len(q)
            assert out["ids"] == want[1][:n].tolist()
            hits = [h for row in out["attributes"] for h in row]
            expect = want[2].slice(0, n * 5).to_pylist()
            for hit, row, i in zip(hits, expect, want[1][:n].reshape(-1), strict=True):
                if i < 0:
                    assert hit is None
                    continue
                assert hit == {**row, "ts": row["ts"].isoformat()}
                assert hit["lang"] == "en" and hit["year"] >= 2018
            schema = decode_schema(out["arrow_schema"])
            assert schema.names == ["lang", "year", "ts", "tags"]
            assert schema.field("ts").type == pa.timestamp("us", tz="UTC")
        # without columns the answer is as before
        out = _search(client, xq[:2]).json()
        assert "attributes" not in out or out["attributes"] is None


def test_bad_filters_and_columns_answer_400(attr_index, svc_data):
    _, xq, _ = svc_data
    with local_client(attr_index) as client:
        for f, needle in (("nope = 1", "nope"), ("year = 'x'", "year"),
                          ("lang = = 'en'", "filter")):
            err = assert_error(_search(client, xq[:2], filter=f), 400, "invalid_filter")
            assert needle in err["message"]
        err = assert_error(_search(client, xq[:1], columns=["title"]), 400, "invalid_columns")
        assert "title" in err["message"]
        assert_error(_search(client, xq[:1], filter=3), 422, "invalid_request")


def test_add_with_attributes_over_json(attr_index, svc_data):
    _, xq, _ = svc_data
    new = (xq[:3] + np.float32(0.01)).tolist()
    rows = [{"lang": "xx", "year": 2030, "ts": "2025-05-01T12:00:00+00:00", "tags": ["a"]},
            {"lang": "xx", "year": 2031},  # missing keys are nulls
            None]
    with local_client(attr_index) as client:
        r = client.post("/v1/vectors", json={"vectors": new, "ids": [90_000, 90_001, 90_002],
                                             "attributes": rows})
        assert r.status_code == 200, r.text
        out = _search(client, xq[:3], filter="lang = 'xx'", columns=["year", "ts"], k=3).json()
        got = {i: h for row_ids, row in zip(out["ids"], out["attributes"], strict=True)
               for i, h in zip(row_ids, row, strict=True) if i >= 0}
        assert set(got) == {90_000, 90_001}
        assert got[90_000] == {"year": 2030, "ts": "2025-05-01T12:00:00+00:00"}
        assert got[90_001] == {"year": 2031, "ts": None}
        index = client.backend.index
        assert index.get_attributes(np.array([90_002]), ["lang"]).column(0).null_count == 1
        # values that do not fit the column's type, and a column the index does not have
        for bad, needle in (([{"year": "soon"}], "year"), ([{"title": "x"}], "title")):
            r = client.post("/v1/vectors", json={"vectors": new[:1], "attributes": bad})
            assert needle in assert_error(r, 422, "invalid_request")["message"]
        r = client.post("/v1/vectors", json={"vectors": new[:1], "attributes": rows})
        assert_error(r, 422, "invalid_request")  # 3 objects for 1 vector


def test_attribute_rows_round_trip_through_json(svc_data):
    # what the client sends and rebuilds: every attribute type, nulls included
    table = _attributes(12, seed=3)
    from shardann.service._attrjson import encode_schema, rows_for_json
    rows = rows_for_json(table)
    import json
    rows = json.loads(json.dumps(rows))  # what travels
    back = rows_to_table(rows, decode_schema(encode_schema(table.schema)),
                         columns=table.column_names)
    assert back.equals(table)
    assert rows_to_table([{}, None]) is None


def test_empty_index_and_no_attributes(small_index, svc_data):
    _, xq, _ = svc_data
    with local_client(copy.deepcopy(small_index)) as client:
        err = assert_error(_search(client, xq[:1], filter="lang = 'en'"), 400, "invalid_filter")
        assert "no attributes" in err["message"]
        assert_error(_search(client, xq[:1], columns=["lang"]), 400, "invalid_columns")
