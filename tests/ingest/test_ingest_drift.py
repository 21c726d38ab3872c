"""Ingest records the drift of the rows it writes (issue 22 item 2): the encode
tasks measure each block, the commit sums them into the manifest, create and
append alike, as the local index measures the same rows."""

import numpy as np
import pytest
from ingest_support import TRAIN, D, data

from shardann.distributed import ingest
from shardann.drift import merge_stats
from shardann.index import load_index
from shardann.storage import IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]


def _local_stats(model, x):
    xp = model.prepare(x)
    list_no, payload = model.encode(xp)
    return model.drift_stats(xp, list_no, payload)


def test_ingest_create_and_append_record_drift(tmp_path):
    x = data(6000)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((D, D)))
    moved = (data(3000, seed=2) @ q.astype(np.float32)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", moved)
    path = str(tmp_path / "idx")
    ingest(path, str(tmp_path / "a.npy"), block_rows=2000, spot_check=0, **TRAIN)
    store = IndexStore.open(path)
    d1 = store.manifest["drift"]
    assert d1["added"]["n"] == d1["since_training"]["n"] == 6000
    assert d1["latest"]["version"] == 1
    model = load_index(store)
    want = _local_stats(model, x)  # what the local index measures for these rows
    for kind in ("coarse", "pq"):
        assert d1["added"][kind]["sum"] == pytest.approx(want[kind]["sum"], rel=1e-5)
        assert d1["added"][kind]["over_p90"] == want[kind]["over_p90"]
    rep = store.drift()
    assert not rep["retrain_recommended"]  # the training sample's own distribution
    ingest(path, str(tmp_path / "b.npy"), block_rows=1000, spot_check=0, **TRAIN)
    store = IndexStore.open(path)
    d2 = store.manifest["drift"]
    assert d2["baseline"] == d1["baseline"]
    assert d2["added"]["n"] == 3000 and d2["latest"]["version"] == 2
    assert d2["since_training"] == merge_stats(d1["since_training"], d2["added"])
    rep = store.drift()
    # observed: the rotated rows read far above the threshold
    assert rep["latest"]["coarse"]["ratio"] > 1.5 and rep["retrain_recommended"]
