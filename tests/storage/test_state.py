"""IndexState: the values the store keeps, to and from indexes, through pickle and the
store; and the layer rule (shardann.storage imports nothing from shardann.index)."""

import ast
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from storage_support import NB, K, search_kw

import shardann
from shardann.index import index_from_state, load_index
from shardann.storage import IndexState, IndexStore

KINDS = [("flat", {}), ("ivfflat", {"metric": "ip"}),
         ("ivfpq", {"opq": True, "keep_vectors": "float16"}), ("ivfpq", {"nbits": 4})]
IDS = ["flat", "ivfflat", "ivfpq-opq-keep", "ivfpq-4bit"]


def _same_state(a, b):
    assert (a.kind, a.config, a.trained, a.nlist, a.next_id) == \
        (b.kind, b.config, b.trained, b.nlist, b.next_id)
    assert a.columns == b.columns and sorted(a.arrays) == sorted(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    np.testing.assert_array_equal(a.list_sizes, b.list_sizes)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert sorted(a.payload) == sorted(b.payload)
    for k in a.payload:
        np.testing.assert_array_equal(a.payload[k], b.payload[k])


@pytest.mark.parametrize("kind,kw", KINDS, ids=IDS)
def test_state_round_trips(tmp_path, sdata, make_index, kind, kw):
    """index -> state -> (pickle) -> index, and state -> store -> state: same values,
    same search results."""
    _, xq, _ = sdata
    index = make_index(kind, **kw)
    index.remove_ids([3, 4])
    state = index.to_state()
    assert state.ntotal == NB - 2 == int(state.list_sizes.sum())
    assert state.columns == index.columns and state.next_id == index.next_id == NB
    want = index.search(xq, K, **search_kw(index))
    again = pickle.loads(pickle.dumps(state))
    _same_state(state, again)
    for s in (state, again):
        got = index_from_state(s).search(xq, K, **search_kw(index))
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    store = IndexStore.create(tmp_path / "s", state)
    loaded = store.load_state()
    _same_state(state, loaded)
    _same_state(state, pickle.loads(pickle.dumps(loaded)))
    # the state is a snapshot: changing the index afterwards does not change it
    if kind != "flat":
        index.centroids[:] = 0
        assert np.abs(state.arrays["centroids"]).sum() > 0


def test_untrained_state(tmp_path):
    index = shardann.IVFPQIndex(16, 8, 4, nbits=4, metric="ip", seed=3)
    state = index.to_state()
    assert not state.trained and state.arrays == {} and state.columns is None
    assert state.ntotal == 0 and state.list_sizes.shape == (8,)
    store = IndexStore.create(tmp_path / "u", pickle.loads(pickle.dumps(state)))
    back = index_from_state(store.load_state())
    assert not back.is_trained and back.get_config() == index.get_config()


@pytest.mark.parametrize("kind,kw", KINDS, ids=IDS)
def test_model_only_state(sdata, make_index, kind, kw):
    """to_state(lists=False) and a state of kind, config and arrays alone give a
    trained, empty index that encodes exactly like the original."""
    xb, _, _ = sdata
    index = make_index(kind, **kw)
    model = index.to_state(lists=False)
    assert model.ntotal == 0 and model.next_id == NB and model.columns == index.columns
    bare = IndexState(index.kind, index.get_config(), True, model.arrays, model.nlist)
    for s in (model, bare, pickle.loads(pickle.dumps(model))):
        twin = index_from_state(s)
        assert twin.is_trained and twin.ntotal == 0
        a, b = index.encode(index.prepare(xb[:50])), twin.encode(twin.prepare(xb[:50]))
        np.testing.assert_array_equal(a[0], b[0])
        for name in a[1]:
            np.testing.assert_array_equal(a[1][name], b[1][name])
    assert index_from_state(model).next_id == NB


def test_partial_load_is_zero_copy_and_keeps_next_id(tmp_path, make_index):
    index = make_index("ivfpq")
    index.remove_ids([NB - 1])  # the largest id is gone, but never reused
    store = IndexStore.create(tmp_path / "s", index, row_group_rows=200)
    groups = store.manifest["files"]["segments"][0]["row_groups"]
    lists = np.arange(groups[0]["first_list"], groups[1]["last_list"] + 1)
    state = store.load_state(lists=lists)
    assert state.ntotal == groups[0]["rows"] + groups[1]["rows"]
    assert not state.payload["codes"].flags.owndata  # a view of Arrow's buffer
    assert state.next_id == NB
    shard = index_from_state(state)
    assert shard.ntotal == state.ntotal and shard.next_id == NB
    assert load_index(store, lists=lists).ntotal == state.ntotal


def test_state_validation(make_index):
    state = make_index("ivfpq").to_state()
    with pytest.raises(ValueError, match="kind must be one of"):
        IndexState("hnsw", {}, False).validate()
    with pytest.raises(ValueError, match="add up to"):
        IndexState(state.kind, state.config, True, state.arrays, state.nlist, state.columns,
                   state.list_sizes, state.ids[:-1], state.payload).validate()
    with pytest.raises(ValueError, match=r"payload\['codes'\] must be uint8"):
        IndexState(state.kind, state.config, True, state.arrays, state.nlist, state.columns,
                   state.list_sizes, state.ids, {"codes": state.payload["codes"][:, :2]}
                   ).validate()
    with pytest.raises(TypeError, match="float32"):
        IndexState(state.kind, state.config, True, {"centroids": np.zeros((2, 2))},
                   state.nlist, state.columns).validate()
    with pytest.raises(TypeError, match="IndexState"):
        IndexStore.create("/nonexistent/never", {"kind": "flat"})


def test_states_that_do_not_describe_an_index(tmp_path, make_index):
    state = make_index("ivfpq").to_state()
    bad_cols = IndexState(state.kind, state.config, True, state.arrays, state.nlist,
                          {"codes": (state.columns["codes"][0] + 1, np.uint8)})
    with pytest.raises(ValueError, match="do not fit"):
        index_from_state(bad_cols)
    with pytest.raises(ValueError, match="needs arrays"):
        index_from_state(IndexState(state.kind, state.config, True, {}, state.nlist,
                                    state.columns))
    with pytest.raises(ValueError, match="does not build"):
        index_from_state(IndexState("flat", {"d": 4, "colour": "red"}, True))
    # stored, such a state is a corrupt index, named by its manifest
    IndexStore.create(tmp_path / "s", bad_cols)
    with pytest.raises(shardann.CorruptIndexError, match="v00000001.json.*do not fit"):
        shardann.open_index(tmp_path / "s")


def _imports(path):
    """Every module an import statement in ``path`` names (absolute or relative)."""
    tree = ast.parse(open(path).read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out += [base] + [f"{base}.{a.name}" if node.module else f"{base}{a.name}"
                             for a in node.names]
    return out


def test_storage_imports_nothing_from_index():
    """Statically (function-level imports too) and at run time."""
    root = os.path.dirname(shardann.storage.__file__)
    for name in os.listdir(root):
        if name.endswith(".py"):
            for mod in _imports(os.path.join(root, name)):
                assert not mod.startswith(("..index", "shardann.index")), (name, mod)
                assert "_parquet" not in mod, (name, mod)  # no Parquet decoder of ours
    # at run time: load shardann.storage without shardann/__init__.py (which imports the
    # indexes), write and read a store through IndexState alone
    code = textwrap.dedent(f"""
        import sys, types, tempfile
        import numpy as np
        pkg = types.ModuleType("shardann")
        pkg.__path__ = [{os.path.dirname(shardann.__file__)!r}]
        sys.modules["shardann"] = pkg
        import shardann.storage as st
        rows = np.arange(12, dtype=np.float32).reshape(3, 4)
        state = st.IndexState("flat", {{"d": 4, "metric": "l2"}}, True, {{}}, 1,
                              {{"vectors": (4, "float32")}}, np.array([3]),
                              np.array([5, 6, 7]), {{"vectors": rows}}, 8)
        store = st.IndexStore.create(tempfile.mkdtemp() + "/s", state)
        txn = store.transaction(); txn.delete([6]); store = txn.commit()
        back = st.IndexStore.open(store.path).load_state()
        assert back.ids.tolist() == [5, 7] and back.next_id == 8, back
        assert store.verify()["ntotal"] == 2
        bad = sorted(m for m in sys.modules
                     if m.startswith("shardann.index") or m.startswith("shardann._parquet"))
        print("IMPORTED", bad)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "IMPORTED []"
