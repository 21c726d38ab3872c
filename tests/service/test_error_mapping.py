"""The service answers typed errors by their type, never by their message text:
``DuplicateIdError`` is 409 Conflict, whatever it says (no Ray)."""

import copy

import numpy as np
import pytest
from service_support import assert_error, local_client

import shardann
from shardann.errors import CommitConflictError, DuplicateIdError


def test_adding_present_ids_raises_duplicate_id_error(small_index, svc_data):
    from shardann.service import LocalBackend

    _, xq, _ = svc_data
    index = copy.deepcopy(small_index)
    with pytest.raises(DuplicateIdError, match="already in the index"):
        index.add(xq[:1], ids=[5])
    with pytest.raises(DuplicateIdError, match="already in the index"):
        LocalBackend(index).add(xq[:1], np.array([5]))
    assert issubclass(DuplicateIdError, ValueError)
    assert shardann.DuplicateIdError is DuplicateIdError


@pytest.mark.parametrize("exc,status,code", [
    (DuplicateIdError("id 5 is taken"), 409, "conflict"),            # no telltale text
    (ValueError("ids already in the index, e.g. 5"), 422, "invalid_request"),  # text alone
    (CommitConflictError("version 3 was committed by another writer"), 409, "conflict"),
])
def test_add_errors_map_by_type_not_message(small_index, svc_data, monkeypatch, exc, status,
                                            code):
    _, xq, _ = svc_data
    with local_client(small_index) as c:
        def add(x, ids):
            raise exc

        monkeypatch.setattr(c.backend, "add", add)
        r = c.post("/v1/vectors", json={"vectors": xq[:1].tolist(), "ids": [5]})
        assert_error(r, status, code)
        assert r.json()["error"]["message"] == str(exc)


def test_a_damaged_store_is_named_in_the_answer(small_index, svc_data, monkeypatch):
    from shardann.errors import CorruptIndexError

    _, xq, _ = svc_data
    with local_client(small_index) as c:
        def add(x, ids):
            raise CorruptIndexError("/data/idx/_manifests/v00000007.json: checksum mismatch")

        monkeypatch.setattr(c.backend, "add", add)
        r = c.post("/v1/vectors", json={"vectors": xq[:1].tolist(), "ids": [5]})
        assert_error(r, 500, "corrupt_index")
        assert "v00000007.json" in r.json()["error"]["message"]
