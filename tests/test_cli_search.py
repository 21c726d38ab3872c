"""``shardann search``: a saved index's filtered neighbours and their columns as JSON
lines, equal to the library's answer; bad filters are usage errors."""

import json

import numpy as np
import pyarrow as pa

import shardann
from shardann.cli import main


def test_search_command_prints_filtered_hits(tmp_path, data, trained, capsys):
    import copy

    xb, xq, _ = data
    index = copy.deepcopy(trained("ivfpq"))
    n = 2000
    rng = np.random.default_rng(0)
    attrs = pa.table({"lang": pa.array(np.array(["en", "de"])[rng.integers(0, 2, n)]),
                      "year": rng.integers(2000, 2030, n)})
    index.add(xb[:n], attributes=attrs)
    index.save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", xq[:3])
    code = main(["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"),
                 "-k", "4", "--nprobe", "8", "--filter", "lang = 'de' AND year > 2010",
                 "--columns", "year,lang"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 3
    D, I, A = index.search(xq[:3], 4, nprobe=8, filter="lang = 'de' AND year > 2010",
                           columns=["year", "lang"])
    rows = A.to_pylist()
    for i, line in enumerate(out):
        got = json.loads(line)
        assert got["ids"] == I[i].tolist()
        np.testing.assert_allclose(got["distances"], D[i], rtol=1e-6)
        assert got["attributes"] == rows[i * 4:(i + 1) * 4]
        assert all(h["lang"] == "de" and h["year"] > 2010 for h in got["attributes"])
    for bad in (["--filter", "nope = 1"], ["--columns", "title"]):
        code = main(["search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"),
                     *bad])
        err = capsys.readouterr().err
        assert code == 2 and ("nope" in err or "title" in err), err
    assert main(["search", "--queries", str(tmp_path / "q.npy")]) == 2
    assert shardann.open_index(tmp_path / "idx").ntotal == n
