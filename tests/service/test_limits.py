"""The service refuses exactly the vectors the library refuses as too large
(``shardann._validation.MAX_SQUARED_NORM``), with a 422 that points at the row."""

import json

import numpy as np
import pytest
from service_support import JSON, D, assert_error, local_client

from shardann._validation import MAX_SQUARED_NORM


@pytest.fixture(scope="module")
def client(small_index):
    with local_client(small_index) as c:
        yield c


def _row(squared_norm):
    return [float(np.sqrt(squared_norm / D))] * D


def test_too_large_vector_is_422_naming_the_row(client, small_index):
    body = {"vectors": [_row(1.0), _row(2 * MAX_SQUARED_NORM)], "k": 3}
    r = client.post("/v1/search", headers=JSON, content=json.dumps(body))
    assert_error(r, 422, "invalid_request")
    err = r.json()["error"]
    assert err["message"].startswith("vectors[1] has squared norm 2e+36")
    assert err["details"] == [{"loc": ["body", "vectors", 1], "type": "too_large"}]
    with pytest.raises(ValueError, match="row 1 has squared norm"):  # the library agrees
        small_index.search(np.array(body["vectors"], np.float32), 3)


def test_large_vector_under_the_limit_is_searched(client):
    body = {"vectors": [_row(MAX_SQUARED_NORM / 4)], "k": 3}
    r = client.post("/v1/search", headers=JSON, content=json.dumps(body))
    assert r.status_code == 200, r.text
    assert len(r.json()["ids"][0]) == 3


def test_huge_request_headers_are_431_before_authentication(small_index):
    from service_support import TOKEN

    from shardann.service.app import MAX_HEADER_BYTES
    from shardann.service.config import token_digest

    with local_client(small_index, token_sha256=token_digest(TOKEN)) as c:
        big = {"x-padding": "a" * MAX_HEADER_BYTES}  # no token: still 431, not 401
        r = c.post("/v1/search", headers={**JSON, **big}, content=b"{}")
        assert_error(r, 431, "headers_too_large")
        assert str(MAX_HEADER_BYTES) in r.json()["error"]["message"]
        many = {f"x-h{i}": "b" * 1000 for i in range(80)}  # the total counts
        r = c.get("/v1/health", headers=many)
        assert_error(r, 431, "headers_too_large")
        r = c.get("/v1/health", headers={"x-small": "c" * 1000})
        assert r.status_code == 200
