"""A larger ingest: several Parquet files of mixed encodings and row-group sizes (some
row groups larger than a block, streamed in parts), compared with the core index.

The default suite runs 60k vectors; ``-m slow`` runs 300k."""

import numpy as np
import pytest
from ingest_support import assert_same_index, data, write_mixed

from shardann.distributed import ingest
from shardann.storage import IndexStore

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

D = 64


@pytest.mark.slow  # 18 s; tests/ingest/test_ingest.py covers many files in the default suite
@pytest.mark.parametrize("n", [60_000, 300_000])
def test_many_files_mixed_row_groups(tmp_path, n):
    x = data(n, D, seed=11)
    sizes = [n // 10, n // 4, n // 20, n // 5, n // 10]
    sizes.append(n - sum(sizes))
    (tmp_path / "in").mkdir()
    # row groups from 1/100 of a block to 3 blocks: small ones are grouped into a block,
    # big ones are read in parts of at most block_rows rows
    block_rows = n // 20
    write_mixed(tmp_path / "in", x, sizes, encodings=("fsl", "list", "binary", "fsb"),
                row_groups=[block_rows // 100, block_rows * 3, 777, block_rows, 5000])
    path = str(tmp_path / "idx")
    s = ingest(path, str(tmp_path / "in"), nlist=64, M=16, niter=8, pq_niter=8,
               block_rows=block_rows, progress=False)
    assert s.vectors == n and s.skipped_rows == 0
    # small row groups are packed into blocks of at most block_rows (about 40 blocks here,
    # not one per row group)
    assert s.blocks <= 50
    assert s.recall > 0.5  # observed 0.68 (60k) and 0.66 (300k), nprobe=16 of 64
    store, _ = assert_same_index(path, x, queries=data(100, D, seed=12), nprobe=8)
    # every segment's row groups are whole lists in ascending order
    for seg in store.manifest["files"]["segments"]:
        firsts = [g["first_list"] for g in seg["row_groups"]]
        lasts = [g["last_list"] for g in seg["row_groups"]]
        assert firsts == sorted(firsts) and all(
            a > b for a, b in zip(firsts[1:], lasts[:-1], strict=True))
    assert IndexStore.open(path).list_sizes().sum() == n
    np.testing.assert_array_equal(np.sort(store.read_lists()[1]), np.arange(n))
