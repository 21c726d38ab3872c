"""``shardann bench core --fresh-process-latency``'s child: a real module run as a
script by path in a new interpreter, timing import, open and the first searches."""

import numpy as np

import shardann
from shardann.bench import _fresh
from shardann.bench.datasets import synthetic_split


def test_child_times_a_saved_index_in_a_new_process(tmp_path):
    xb, xq, xt = synthetic_split(600, 4, 8, nt=300, seed=1)
    index = shardann.IVFFlatIndex(8, 4, "l2", seed=0)
    index.train(xt)
    index.add(xb)
    index.save(str(tmp_path / "idx"))
    np.save(tmp_path / "q.npy", xq[:3])
    out = _fresh._spawn("shardann", [tmp_path / "idx", tmp_path / "q.npy", 5, 2, 0],
                        _fresh._child_env())
    assert set(out) == {"import_s", "open_s", "search_ms"}
    assert len(out["search_ms"]) == 3 and all(t > 0 for t in out["search_ms"])
    # the clock starts before shardann is imported: import is measured, not free
    assert out["import_s"] > 0.01
