"""The HTTP API over the local backend (no Ray, no sockets): results, auth,
validation, limits, error mapping, batching, metrics and the OpenAPI schema."""

import json
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_support import JSON, JSON_AUTH, TOKEN, D, as_result, assert_error, bearer, local_client

from shardann.service.config import token_digest

AUTH = {"token_sha256": token_digest(TOKEN)}


@pytest.fixture(scope="module")
def client(small_index):
    """One app with a token, shared by the read-only tests of this module."""
    with local_client(small_index, **AUTH, max_body_bytes=256 * 1024, max_batch_size=64,
                      max_add_batch=64) as c:
        yield c


def test_search_matches_local_index(client, small_index, svc_data):
    _, xq, _ = svc_data
    r = client.post("/v1/search", headers=bearer(),
                    json={"vectors": xq[:7].tolist(), "k": 5, "nprobe": 4})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["metric"] == "l2" and out["partial"] is False and out["missing_shards"] == []
    D_, I_ = as_result(out)
    D0, I0 = small_index.search(xq[:7], 5, nprobe=4)
    np.testing.assert_array_equal(I_, I0)
    np.testing.assert_array_equal(D_, D0)  # float32 survives the JSON round trip exactly


def test_padding_is_null(client, small_index, svc_data):
    _, xq, _ = svc_data
    # one probed list holds ~250 vectors: k=600 leaves padded slots
    r = client.post("/v1/search", headers=bearer(),
                    json={"vectors": xq[:1].tolist(), "k": 600, "nprobe": 1})
    assert r.status_code == 200
    out = r.json()
    ids, dist = np.array(out["ids"][0]), out["distances"][0]
    assert (ids == -1).any()
    assert all((d is None) == (i == -1) for d, i in zip(dist, ids, strict=True))
    D0, I0 = small_index.search(xq[:1], 600, nprobe=1)
    np.testing.assert_array_equal(ids, I0[0])


def test_concurrent_single_queries_are_batched(small_index, svc_data):
    _, xq, _ = svc_data
    with local_client(small_index, batch_wait_timeout_s=0.05, batch_max_size=16) as c:
        results = {}

        def one(i):
            r = c.post("/v1/search", json={"vectors": [xq[i].tolist()], "k": 3, "nprobe": 4})
            results[i] = r

        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, I0 = small_index.search(xq[:24], 3, nprobe=4)
        for i, r in results.items():
            assert r.status_code == 200
            np.testing.assert_array_equal(r.json()["ids"][0], I0[i])
        # fewer index calls than requests: single queries were merged
        assert c.backend.calls["search"] < 24
        text = c.get("/metrics").text
        assert "shardann_search_batch_size_count" in text


# -- auth ------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"},
                                     {"Authorization": f"bearer {TOKEN}x"}])
def test_auth_refused_and_nothing_changes(client, svc_data, headers):
    xb, xq, _ = svc_data
    before = dict(client.backend.calls), client.backend.ntotal
    for method, path, body in [("POST", "/v1/search", {"vectors": xq[:1].tolist()}),
                               ("POST", "/v1/vectors", {"vectors": xb[:1].tolist(),
                                                        "ids": [10**6]}),
                               ("DELETE", "/v1/vectors", {"ids": [1, 2, 3]}),
                               ("GET", "/v1/stats", None), ("GET", "/metrics", None),
                               ("POST", "/v1/admin/reload", {}),
                               ("GET", "/openapi.json", None),
                               ("GET", "/docs", None), ("GET", "/redoc", None),
                               ("POST", "/v1/search", None)]:
        r = client.request(method, path, headers={**headers, **JSON},
                           content=None if body is None else json.dumps(body))
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert (dict(client.backend.calls), client.backend.ntotal) == before


def test_health_needs_no_token(client):
    r = client.get("/v1/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["shards"][0]["alive"] == 1


def test_token_is_accepted_case_insensitive_scheme(client, svc_data):
    _, xq, _ = svc_data
    r = client.post("/v1/search", headers={"Authorization": f"bearer {TOKEN}"},
                    json={"vectors": xq[:1].tolist()})
    assert r.status_code == 200


# -- validation ------------------------------------------------------------------------------
def _row(v=0.5, d=D):
    return [v] * d


BAD_SEARCHES = [
    ("wrong dim", {"vectors": [_row(d=D - 1)]}, 422),
    ("ragged", {"vectors": [_row(), _row(d=3)]}, 422),
    ("k=0", {"vectors": [_row()], "k": 0}, 422),
    ("k=1e6", {"vectors": [_row()], "k": 10**6}, 422),
    ("k float", {"vectors": [_row()], "k": 2.5}, 422),
    ("k string", {"vectors": [_row()], "k": "10"}, 422),
    ("k bool", {"vectors": [_row()], "k": True}, 422),
    ("k huge int", {"vectors": [_row()], "k": 10**40}, 422),
    ("nprobe > nlist", {"vectors": [_row()], "nprobe": 17}, 422),
    ("nprobe 0", {"vectors": [_row()], "nprobe": 0}, 422),
    ("refine without vectors", {"vectors": [_row()], "refine_factor": 2}, 422),
    ("refine too large", {"vectors": [_row()], "refine_factor": 10**9}, 422),
    ("empty batch", {"vectors": []}, 422),
    ("too many vectors", {"vectors": [_row()] * 65}, 422),
    ("strings", {"vectors": [["a"] * D]}, 422),
    ("bools", {"vectors": [[True] * D]}, 422),
    ("nested too deep", {"vectors": [[_row()]]}, 422),
    ("flat vector", {"vectors": _row()}, 422),
    ("null vectors", {"vectors": None}, 422),
    ("missing vectors", {"k": 3}, 422),
    ("unknown field", {"vectors": [_row()], "topk": 3}, 422),
    ("float32 overflow", {"vectors": [[1e39] * D]}, 422),
    ("distance overflow", {"vectors": [[3e37] * D]}, 422),
    ("negative timeout", {"vectors": [_row()], "timeout_s": -1}, 422),
    ("body is a list", [_row()], 422),
    ("body is a number", 3, 422),
]


@pytest.mark.parametrize("name,body,status", BAD_SEARCHES, ids=[b[0] for b in BAD_SEARCHES])
def test_bad_search_is_4xx_json(client, name, body, status):
    r = client.post("/v1/search", headers=JSON_AUTH, content=json.dumps(body))
    assert_error(r, status)


@pytest.mark.parametrize("raw", ['{"vectors": [[NaN' + ", 0.5" * (D - 1) + "]]}",
                                 '{"vectors": [[Infinity' + ", 0.5" * (D - 1) + "]]}",
                                 '{"vectors": [[-Infinity' + ", 0.5" * (D - 1) + "]]}",
                                 '{"vectors": [[1e999' + ", 0.5" * (D - 1) + "]]}"])
def test_non_finite_is_422(client, raw):
    r = client.post("/v1/search", headers=JSON_AUTH, content=raw)
    assert_error(r, 422, "invalid_request")


@pytest.mark.parametrize("raw", ["{", '{"vectors": [[1, 2]', "vectors=1", "\x00\xff",
                                 '{"vectors": [[1,]]}'])
def test_malformed_json_is_400(client, raw):
    r = client.post("/v1/search", headers={**bearer(), "content-type": "application/json"},
                    content=raw)
    assert_error(r, 400, "malformed_json")


@pytest.mark.parametrize("ctype", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_body_that_is_not_json_is_415(client, ctype):
    headers = bearer() if ctype is None else {**bearer(), "content-type": ctype}
    r = client.post("/v1/search", headers=headers, content=json.dumps({"vectors": [_row()]}))
    assert_error(r, 415, "unsupported_media_type")


def test_body_limit_413_by_header_and_by_stream(client):
    big = json.dumps({"vectors": [_row()] * 2000})  # ~ 300 kB > 256 kB
    r = client.post("/v1/search", headers=JSON_AUTH, content=big)
    assert_error(r, 413, "body_too_large")

    def chunks():  # no Content-Length: counted while streaming
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192].encode()

    r = client.post("/v1/search", headers=JSON_AUTH, content=chunks())
    assert_error(r, 413, "body_too_large")


def test_unknown_route_and_method(client):
    assert_error(client.get("/v1/nope", headers=bearer()), 404, "not_found")
    assert_error(client.put("/v1/search", headers=bearer(), json={}), 405,
                 "method_not_allowed")


def test_service_keeps_serving_after_bad_requests(client, svc_data):
    _, xq, _ = svc_data
    for _, body, _ in BAD_SEARCHES:
        client.post("/v1/search", headers=JSON_AUTH, content=json.dumps(body))
    r = client.post("/v1/search", headers=bearer(), json={"vectors": xq[:2].tolist()})
    assert r.status_code == 200
    counts = client.get("/v1/stats", headers=bearer()).json()["service"]["requests"]
    assert not any(s.startswith("5") for s in counts.get("/v1/search", {}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=5),
    max_leaves=40)
near_valid = st.fixed_dictionaries(
    {"vectors": st.one_of(
        st.lists(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False),
                          min_size=D, max_size=D), min_size=1, max_size=4),
        st.lists(st.lists(st.floats(), min_size=0, max_size=D + 2), max_size=3),
        json_values)},
    optional={"k": st.one_of(st.integers(-5, 2000), json_values),
              "nprobe": st.one_of(st.integers(-2, 40), st.none(), json_values),
              "refine_factor": st.integers(-1, 100), "allow_partial": json_values,
              "timeout_s": st.one_of(st.floats(), json_values), "extra": json_values})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(near_valid, json_values))
def test_fuzz_search_never_5xx(client, body):
    raw = json.dumps(body)  # Python's json writes NaN/Infinity tokens: they must be refused
    r = client.post("/v1/search", headers=JSON_AUTH, content=raw)
    assert r.status_code < 500, (r.status_code, r.text, raw[:200])
    if r.status_code != 200:
        assert_error(r)
    else:
        out = r.json()
        assert len(out["ids"]) == len(body["vectors"])
        for ids, dist in zip(out["ids"], out["distances"], strict=True):
            assert all((d is None) == (i == -1) for d, i in zip(dist, ids, strict=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_fuzz_raw_bytes_never_5xx(client, raw):
    r = client.post("/v1/search", headers={**bearer(), "content-type": "application/json"},
                    content=raw)
    assert 400 <= r.status_code < 500
    assert_error(r)


# -- writes ------------------------------------------------------------------------------------
def test_add_delete_and_conflicts(small_index, svc_data):
    xb, xq, _ = svc_data
    with local_client(small_index, **AUTH) as c:
        h = bearer()
        r = c.post("/v1/vectors", headers=h, json={"vectors": xq[:3].tolist(),
                                                   "ids": [10_000, 10_001, 10_002]})
        assert r.status_code == 200, r.text
        assert r.json() == {"ids": [10_000, 10_001, 10_002], "ntotal": 4003}
        r = c.post("/v1/search", headers=h, json={"vectors": xq[:3].tolist(), "k": 1,
                                                  "nprobe": 16})
        assert [row[0] for row in r.json()["ids"]] == [10_000, 10_001, 10_002]
        # ids already present -> 409; duplicates / negative / too large / count -> 422
        assert_error(c.post("/v1/vectors", headers=h, json={"vectors": xq[:1].tolist(),
                                                            "ids": [5]}), 409, "conflict")
        for ids in ([20_000, 20_000], [-1, 3], [2**63, 1], [7]):
            r = c.post("/v1/vectors", headers=h, json={"vectors": xq[:2].tolist(), "ids": ids})
            assert_error(r, 422, "invalid_request")
        r = c.post("/v1/vectors", headers=h, json={"vectors": xq[:2].tolist()})
        assert r.status_code == 200 and r.json()["ids"] == [10_003, 10_004]
        assert c.backend.ntotal == 4005
        r = c.request("DELETE", "/v1/vectors", headers=h,
                      json={"ids": [10_000, 10_001, 10_002, 123_456_789]})
        assert r.json() == {"removed": 3, "ntotal": 4002}
        r = c.post("/v1/search", headers=h, json={"vectors": xq[:3].tolist(), "k": 5,
                                                  "nprobe": 16})
        assert not np.isin(np.array(r.json()["ids"]), [10_000, 10_001, 10_002]).any()
        for body in ({"ids": []}, {"ids": ["1"]}, {"ids": [2**64]}, {}, {"ids": 3}):
            assert_error(c.request("DELETE", "/v1/vectors", headers=h, json=body), 422)
        assert c.backend.ntotal == 4002


# -- failures ----------------------------------------------------------------------------------
def test_unavailable_shard_is_503_with_retry_after(small_index, svc_data):
    _, xq, _ = svc_data
    with local_client(small_index) as c:
        c.backend.unavailable = True
        for rows in (1, 3):
            r = c.post("/v1/search", json={"vectors": xq[:rows].tolist()})
            assert_error(r, 503, "shard_unavailable")
            assert int(r.headers["retry-after"]) >= 1
        h = c.get("/v1/health")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"
        c.backend.unavailable = False
        assert c.post("/v1/search", json={"vectors": xq[:1].tolist()}).status_code == 200


def test_deadline_is_504(small_index, svc_data):
    _, xq, _ = svc_data
    with local_client(small_index, request_timeout_s=5.0) as c:
        c.backend.delay_s = 0.5
        for rows in (1, 2):
            r = c.post("/v1/search", json={"vectors": xq[:rows].tolist(), "timeout_s": 0.1})
            assert_error(r, 504, "timeout")
            assert "retry-after" in r.headers
        c.backend.delay_s = 0
        assert c.post("/v1/search", json={"vectors": xq[:1].tolist()}).status_code == 200
        errors = c.get("/v1/stats").json()["service"]["errors"]
        assert errors["timeout"] == 2


# -- introspection -------------------------------------------------------------------------------
def test_stats_and_metrics(client, svc_data):
    _, xq, _ = svc_data
    client.post("/v1/search", headers=bearer(), json={"vectors": xq[:2].tolist()})
    s = client.get("/v1/stats", headers=bearer()).json()
    assert s["ntotal"] == 4000 and s["d"] == D and s["num_shards"] == 1
    assert s["versions"] == [s["version"]] and s["balance"] == 1.0
    svc = s["service"]
    assert svc["requests"]["/v1/search"]["200"] >= 1 and svc["auth"] is True
    assert svc["limits"]["max_batch_size"] == 64
    text = client.get("/metrics", headers=bearer()).text
    for name in ("shardann_requests_total", "shardann_request_duration_seconds_bucket",
                 "shardann_errors_total", "shardann_search_vectors_total",
                 "shardann_shard_search_calls_total", "shardann_shard_rows",
                 "shardann_index_vectors"):
        assert name in text, name
    assert 'shardann_requests_total{endpoint="/v1/search",method="POST",status="200"}' in text


def test_openapi_schema_is_accurate(client):
    r = client.get("/openapi.json", headers=bearer())
    assert r.status_code == 200
    spec = r.json()
    paths = spec["paths"]
    assert set(paths) == {"/v1/search", "/v1/vectors", "/v1/health", "/v1/stats",
                          "/v1/admin/reload", "/metrics"}
    assert set(paths["/v1/vectors"]) == {"post", "delete"}
    schemas = spec["components"]["schemas"]
    req = schemas["SearchRequest"]
    assert req["properties"]["vectors"]["maxItems"] == 64
    assert req["properties"]["k"]["maximum"] == 1000
    assert req["additionalProperties"] is False
    assert "SearchResponse" in schemas and "ErrorResponse" in schemas
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" not in paths["/v1/health"]["get"]
    assert paths["/v1/search"]["post"]["security"] == [{"HTTPBearer": []}]
    for status in ("401", "413", "422", "503", "504"):
        assert status in paths["/v1/search"]["post"]["responses"]


@pytest.mark.parametrize("path,marker", [("/docs", "swagger-ui"), ("/redoc", "redoc")])
def test_docs_pages_behind_the_token(client, small_index, path, marker):
    r = client.get(path)
    assert_error(r, 401, "unauthorized")
    r = client.get(path, headers=bearer())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert marker in r.text.lower() and "/openapi.json" in r.text
    # and without a token the service shows them to everyone (it is on loopback)
    with local_client(small_index) as open_client:
        r = open_client.get(path)
        assert r.status_code == 200 and marker in r.text.lower()
    assert path not in client.get("/openapi.json", headers=bearer()).json()["paths"]
