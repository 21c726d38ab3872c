"""Atomic commits: create-if-absent manifests, one winner among concurrent writers."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from storage_support import NB

import shardann
from shardann.storage import IndexStore


def _codes(n, cs, fill):
    return np.full((n, cs), fill, np.uint8)


def test_two_transactions_from_one_base_one_wins(tmp_path, make_index):
    store = IndexStore.create(tmp_path / "s", make_index("ivfpq"))
    cs = store.code_size
    a, b = store.transaction(), store.transaction()
    a.add(0, np.arange(10000, 10010), codes=_codes(10, cs, 1))
    b.add(1, np.arange(20000, 20010), codes=_codes(10, cs, 2))
    b.delete([0])
    won = a.commit()
    assert won.version == 2
    with pytest.raises(shardann.CommitConflictError, match="version 2 was committed by another"):
        b.commit()
    # the loser's files are gone, the winner's version is intact and current
    segs = os.listdir(tmp_path / "s" / "segments")
    assert len(segs) == 2
    assert os.listdir(tmp_path / "s" / "tombstones") == []
    assert not [n for n in os.listdir(tmp_path / "s" / "_manifests") if n.startswith(".tmp")]
    now = IndexStore.open(tmp_path / "s")
    assert now.version == 2 and now.ntotal == NB + 10
    assert now.verify()["ntotal"] == NB + 10
    # retrying on the new base works
    retry = now.transaction()
    retry.add(1, np.arange(20000, 20010), codes=_codes(10, cs, 2))
    assert retry.commit().version == 3


def test_save_racing_a_transaction(tmp_path, make_index, sdata):
    index = make_index("ivfpq")
    store = IndexStore.create(tmp_path / "s", index)
    txn = store.transaction()
    txn.delete([1, 2, 3])
    index.remove_ids([5])
    index.save(tmp_path / "s")  # version 2
    with pytest.raises(shardann.CommitConflictError):
        txn.commit()
    assert IndexStore.open(tmp_path / "s").ntotal == NB - 1


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import shardann
    from shardann.storage import IndexStore
    path, me, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    store = IndexStore.open(path, version=1)  # the common base, however late we start
    txn = store.transaction()
    ids = np.arange(100000 * (me + 1), 100000 * (me + 1) + 50)
    txn.add(ids % store.nlist, ids, codes=np.full((50, store.code_size), me, np.uint8))
    txn.delete([me])
    while time.time() < start:
        time.sleep(0.001)
    try:
        new = txn.commit()
        print("WON", new.version, flush=True)
    except shardann.CommitConflictError:
        print("CONFLICT", flush=True)
""")


def test_concurrent_processes_exactly_one_commit_wins(tmp_path, make_index):
    IndexStore.create(tmp_path / "s", make_index("ivfpq"))
    start = time.time() + 8.0
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "s"), str(i),
                               repr(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(out.strip())
    won = [i for i, o in enumerate(outs) if o.startswith("WON")]
    assert len(won) == 1, outs
    assert sorted(outs) == ["CONFLICT"] * 3 + ["WON 2"]
    store = IndexStore.open(tmp_path / "s")
    assert store.version == 2 and store.ntotal == NB + 50 - 1
    sizes, ids, cols = store.read_lists()
    w = won[0]
    assert set(ids.tolist()) == (set(range(NB)) - {w}) | set(
        range(100000 * (w + 1), 100000 * (w + 1) + 50))
    assert len(os.listdir(tmp_path / "s" / "segments")) == 2  # losers cleaned up
    assert store.verify()["ntotal"] == store.ntotal
