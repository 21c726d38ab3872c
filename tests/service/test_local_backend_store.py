"""LocalBackend over a real store on disk (issue 19): every write is committed as a
new version and answered with it; it never overwrites another writer's version."""

import numpy as np
import pytest

import shardann
from shardann.service import LocalBackend
from shardann.storage import IndexStore


@pytest.fixture()
def path(tmp_path, small_index):
    import copy
    p = tmp_path / "idx"
    copy.deepcopy(small_index).save(p)
    return p


def test_writes_commit_versions_and_report_them(path, svc_data):
    xb = svc_data[0]
    backend = LocalBackend(path=path)
    assert backend.version == 1
    ids = backend.add(xb[:5] * 1.01, np.arange(10_000, 10_005))
    np.testing.assert_array_equal(ids, np.arange(10_000, 10_005))
    assert backend.version == 2 == backend.newest_version()
    assert backend.remove_ids([0, 1, 2]) == 3
    assert backend.version == 3
    store = IndexStore.open(path)
    assert store.version == 3 and store.ntotal == 4000 + 5 - 3
    assert backend.reopen().ntotal == store.ntotal


def test_a_stale_backend_does_not_overwrite_another_writer(path, svc_data):
    xb = svc_data[0]
    first = LocalBackend(path=path)
    second = LocalBackend(path=path)
    first.add(xb[:2] * 1.01, np.arange(20_000, 20_002))  # version 2
    try:
        second.add(xb[:2] * 0.99, np.arange(30_000, 30_002))
    except shardann.CommitConflictError:  # refused: version 2 is intact
        store = IndexStore.open(path)
        assert store.version == 2 and store.ntotal == 4002
    else:  # merged (a backend that saves with merge=True): both writes are there
        store = IndexStore.open(path)
        assert store.version == 3 and store.ntotal == 4004
    ids = store.live_ids()
    assert np.isin(np.arange(20_000, 20_002), ids).all()


def test_reload_of_a_missing_version_is_404(path):
    import warnings

    from shardann.service import SearchService, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    service = SearchService({"path": str(path), "backend": "local"}, LocalBackend(path=path),
                            environ={})
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        r = client.post("/v1/admin/reload", json={"version": 999})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "version_not_found"
        assert "999" in r.json()["error"]["message"]
        r = client.get("/v1/stats")
        assert r.json()["version"] == 1, r.text  # still serving
