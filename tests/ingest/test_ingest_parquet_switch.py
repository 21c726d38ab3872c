"""An ingest gives the same index with the fast Parquet reader on and off.

``SHARDANN_PARQUET_FAST=0`` (read when the job is planned, on the driver; the
plan carries it to the Ray workers) leaves every Parquet row to Arrow's reader.
"""

import numpy as np
import pytest
from ingest_support import TRAIN, assert_same_index, data, write_mixed

from shardann._parquet import FixedListColumn
from shardann.distributed import ingest

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]


def test_ingest_is_the_same_with_the_fast_reader_off(tmp_path, monkeypatch):
    x = data(4000)
    src = tmp_path / "in"
    src.mkdir()
    # fixed_size_list and list columns (the fast reader's), and binary (Arrow's)
    write_mixed(str(src), x, [1500, 1500, 1000], encodings=("fsl", "list", "binary"),
                row_groups=[700, 333, None])
    on = str(tmp_path / "on")
    ingest(on, str(src), block_rows=1000, **TRAIN)
    monkeypatch.setenv("SHARDANN_PARQUET_FAST", "0")
    for name in ("read", "read_rows"):  # the driver samples: not with the fast reader
        monkeypatch.setattr(FixedListColumn, name,
                            lambda *a, **k: pytest.fail("the fast reader was used"))
    off = str(tmp_path / "off")
    ingest(off, str(src), block_rows=1000, **TRAIN)
    store_on, _ = assert_same_index(on, x)
    store_off, _ = assert_same_index(off, x)
    for a, b in zip(store_on.read_lists(), store_off.read_lists(), strict=True):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(a, b)
