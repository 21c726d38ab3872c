"""Block planning over Parquet row groups (metadata only, no Ray)."""

import numpy as np
import pytest
from ingest_support import data, write_mixed

from shardann.distributed._ingest_inputs import plan_inputs


@pytest.mark.parametrize("group_rows", [7, 100, 333])
def test_small_row_groups_are_packed_into_blocks(tmp_path, group_rows):
    n, block_rows = 5_000, 1_000
    write_mixed(tmp_path, data(n, 8, seed=0), [n // 2, n - n // 2], row_groups=[group_rows])
    plan = plan_inputs(str(tmp_path), block_rows=block_rows)
    # whole row groups per block, none over block_rows unless a single group is
    per_block = group_rows * (block_rows // group_rows)
    assert len(plan.blocks) == sum(-(-(n // 2) // per_block) for _ in range(2))
    for b in plan.blocks:
        assert b.stop - b.start <= block_rows
    covered = {(b.file, r) for b in plan.blocks for r in range(b.start, b.stop)}
    assert len(covered) == n


def test_a_row_group_larger_than_a_block_is_its_own_block(tmp_path):
    write_mixed(tmp_path, data(3_000, 8, seed=0), [3_000], row_groups=[2_500])
    plan = plan_inputs(str(tmp_path), block_rows=1_000)
    assert [(b.start, b.stop) for b in plan.blocks] == [(0, 2_500), (2_500, 3_000)]
    assert np.all([len(b.row_groups) == 1 for b in plan.blocks])
