"""``probe_ratio`` over HTTP: the app and the Python client answer as the local
index does, single queries (micro-batched) included, and refuse bad values."""

import numpy as np
import pytest
from service_support import as_result, assert_error, local_client

from shardann.service.client import Client, InvalidRequestError


@pytest.fixture(scope="module")
def client(small_index):
    with local_client(small_index) as c:
        yield c


def test_probe_ratio_matches_the_local_index(client, small_index, svc_data):
    _, xq, _ = svc_data
    want = small_index.search(xq[:9], 5, nprobe=8, probe_ratio=0.6)
    assert not np.array_equal(want[1], small_index.search(xq[:9], 5, nprobe=8)[1])
    r = client.post("/v1/search", json={"vectors": xq[:9].tolist(), "k": 5, "nprobe": 8,
                                        "probe_ratio": 0.6})
    assert r.status_code == 200, r.text
    D_, I_ = as_result(r.json())
    np.testing.assert_array_equal(I_, want[1])
    np.testing.assert_array_equal(D_, want[0])
    one = client.post("/v1/search", json={"vectors": xq[:1].tolist(), "k": 5, "nprobe": 8,
                                          "probe_ratio": 0.6})  # the batched path
    np.testing.assert_array_equal(one.json()["ids"][0], want[1][0])


def test_python_client_sends_probe_ratio(client, small_index, svc_data):
    _, xq, _ = svc_data
    with Client("http://testserver", transport=client._transport, retries=0) as c:
        D_, I_ = c.search(xq[:4], 5, nprobe=8, probe_ratio=0.6)
        want = small_index.search(xq[:4], 5, nprobe=8, probe_ratio=0.6)
        np.testing.assert_array_equal(I_, want[1])
        np.testing.assert_array_equal(D_, want[0])
        with pytest.raises(InvalidRequestError, match="probe_ratio"):
            c.search(xq[:1], 5, probe_ratio=1.5)


@pytest.mark.parametrize("bad", [0, -0.2, 1.01, True, "0.5"])
def test_bad_probe_ratio_is_422(client, svc_data, bad):
    _, xq, _ = svc_data
    r = client.post("/v1/search", json={"vectors": xq[:1].tolist(), "probe_ratio": bad})
    assert_error(r, 422, "invalid_request")


def test_openapi_states_the_range(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]
    field = schema["properties"]["probe_ratio"]["anyOf"][0]
    assert field["exclusiveMinimum"] == 0 and field["maximum"] == 1


def test_probe_gap_matches_the_local_index(client, small_index, svc_data):
    _, xq, _ = svc_data
    want = small_index.search(xq[:9], 5, nprobe=8, probe_gap=0.05)
    assert not np.array_equal(want[1], small_index.search(xq[:9], 5, nprobe=8)[1])
    r = client.post("/v1/search", json={"vectors": xq[:9].tolist(), "k": 5, "nprobe": 8,
                                        "probe_gap": 0.05})
    assert r.status_code == 200, r.text
    D_, I_ = as_result(r.json())
    np.testing.assert_array_equal(I_, want[1])
    np.testing.assert_array_equal(D_, want[0])
    one = client.post("/v1/search", json={"vectors": xq[:1].tolist(), "k": 5, "nprobe": 8,
                                          "probe_gap": 0.05})  # the batched path
    np.testing.assert_array_equal(one.json()["ids"][0], want[1][0])
    with Client("http://testserver", transport=client._transport, retries=0) as c:
        np.testing.assert_array_equal(c.search(xq[:9], 5, nprobe=8, probe_gap=0.05)[1],
                                      want[1])


@pytest.mark.parametrize("bad", [0, -0.2, True, "0.5"])
def test_bad_probe_gap_is_422(client, svc_data, bad):
    _, xq, _ = svc_data
    r = client.post("/v1/search", json={"vectors": xq[:1].tolist(), "probe_gap": bad})
    assert_error(r, 422, "invalid_request")
