"""Drift alarm (issue 22 item 2): quantization errors of added vectors against
the training errors, per commit and since training; ``shardann info``'s
"Drift" section; the kernels against NumPy twins."""

import json

import numpy as np
import pytest

import shardann
from shardann.bench.datasets import mixture
from shardann.cli import main
from shardann.drift import DEFAULT_THRESHOLD, drift_report, imbalance, merge_stats
from shardann.index._drift import quantization_errors
from shardann.storage import IndexStore

D, NLIST, M, NBITS = 32, 16, 8, 4


@pytest.fixture(scope="module")
def rows():
    """12k rows of one mixture: 6k to train on, 6k more of the same distribution."""
    x = mixture(12_000, D, n_clusters=32, seed=3)
    return x[:6000], x[6000:]


def shifted(x, seed=0):
    """``x`` rotated by a random orthogonal matrix: same norms, other directions."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))
    return (x @ q.astype(np.float32)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(rows):
    return shardann.IVFPQIndex(D, NLIST, M, NBITS, seed=0, niter=8, pq_niter=8).train(rows[0])


def fresh(trained):
    import copy

    return copy.deepcopy(trained)


def test_baseline_is_the_training_errors(trained, rows):
    base = trained.drift()["training"]
    assert base["n"] == 6000
    x = trained.prepare(rows[0])
    labels, payload = trained.encode(x)
    err = trained.quantization_errors(x, labels, payload)
    assert base["coarse"]["mean"] == pytest.approx(float(err["coarse"].mean()), rel=1e-5)
    assert base["pq"]["mean"] == pytest.approx(float(err["pq"].mean()), rel=1e-5)
    assert base["pq"]["p90"] == pytest.approx(float(np.percentile(err["pq"], 90)), rel=1e-5)
    assert 0 < base["pq"]["mean"] < base["coarse"]["mean"]  # PQ reduces the residual
    assert base["pq"]["rows_per_code"] == 6000 / 16
    assert base["lists"]["max_over_mean"] >= 1


def test_same_distribution_is_not_drift(trained, rows):
    index = fresh(trained)
    index.add(rows[1])
    rep = index.drift()
    since = rep["since_training"]
    assert since["n"] == 6000
    # observed: coarse 1.02, pq 1.03 (unseen rows of the training distribution)
    assert 0.9 < since["coarse"]["ratio"] < 1.1
    assert 0.9 < since["pq"]["ratio"] < 1.1
    assert 0.05 < since["pq"]["over_train_p90"] < 0.2  # about 10 %
    assert not rep["retrain_recommended"] and rep["reasons"] == []
    assert rep["lists"]["empty"] == 0


def test_shifted_data_recommends_a_retrain(trained, rows):
    index = fresh(trained)
    index.add(shifted(rows[1]))
    rep = index.drift()
    since = rep["since_training"]
    # observed: coarse 1.82x, pq 2.31x (56 % and 67 % above the training p90)
    assert since["coarse"]["ratio"] > 1.3 * DEFAULT_THRESHOLD
    assert since["pq"]["ratio"] > 1.6 * DEFAULT_THRESHOLD
    assert since["pq"]["over_train_p90"] > 0.5
    assert rep["retrain_recommended"]
    assert any("coarse error" in r for r in rep["reasons"])
    # a higher threshold silences it
    assert not index.drift(threshold=10)["retrain_recommended"]
    with pytest.raises(ValueError, match="threshold"):
        index.drift(threshold=0)


def test_contracting_data_reads_a_high_relative_error(trained, rows):
    """Data scaled towards the origin sits closer to the centroids (absolute errors
    below 1x) but the codebooks miss a larger share of each residual: the relative
    PQ error flags it."""
    index = fresh(trained)
    index.add(rows[1] * np.float32(0.5))
    rep = index.drift()
    since = rep["since_training"]
    assert since["coarse"]["ratio"] < 1 and since["pq"]["ratio"] < 1
    rel = since["pq_relative"]
    assert rel["mean"] == pytest.approx(since["pq"]["mean"] / since["coarse"]["mean"])
    assert rel["ratio"] == pytest.approx(since["pq"]["ratio"] / since["coarse"]["ratio"])
    assert rel["ratio"] > DEFAULT_THRESHOLD
    assert rep["retrain_recommended"]
    assert [r for r in rep["reasons"] if r.startswith("relative PQ error")]
    from shardann.drift import gauges
    assert gauges(rep)["shardann_drift_pq_relative_ratio"] == pytest.approx(rel["ratio"])
    # unchanged data stays below the threshold on the relative figure too
    same = fresh(trained)
    same.add(rows[1])
    assert same.drift()["since_training"]["pq_relative"]["ratio"] < DEFAULT_THRESHOLD


def test_few_rows_never_recommend(trained, rows):
    index = fresh(trained)
    index.add(shifted(rows[1][:50]))
    rep = index.drift()
    assert rep["since_training"]["coarse"]["ratio"] > DEFAULT_THRESHOLD
    assert not rep["retrain_recommended"]


def test_stats_survive_save_open_and_merge_across_commits(trained, rows, tmp_path):
    path = tmp_path / "idx"
    index = fresh(trained)
    same, moved = rows[1][:3000], shifted(rows[1][3000:])
    index.add(same)
    index.save(path)
    opened = shardann.open_index(path)
    assert opened.drift()["training"] == index.drift()["training"]
    opened.add(moved)
    opened.save(path)
    m1 = IndexStore.open(path, version=1).manifest["drift"]
    m2 = IndexStore.open(path).manifest["drift"]
    assert m1["added"]["n"] == 3000 and m2["added"]["n"] == 3000
    assert m2["since_training"]["n"] == 6000
    assert m2["latest"]["version"] == 2 and m2["latest"]["n"] == 3000
    # one index holding both batches measures what the two commits add up to
    both = fresh(trained)
    both.add(same)
    both.add(moved)
    whole = both.drift()["since_training"]
    store = IndexStore.open(path).drift()
    for kind in ("coarse", "pq"):
        assert store["since_training"][kind]["mean"] == pytest.approx(
            whole[kind]["mean"], rel=1e-9)
    merged = merge_stats(m1["added"], m2["added"])
    assert merged["coarse"]["sum"] == pytest.approx(m2["since_training"]["coarse"]["sum"])
    # the latest commit (shifted) reads worse than everything since training
    assert store["latest"]["coarse"]["ratio"] > store["since_training"]["coarse"]["ratio"]
    # a reopened index reports the store's figures, and a delete keeps them
    again = shardann.open_index(path)
    assert again.drift()["since_training"]["n"] == 6000
    again.remove_ids(np.arange(10))
    again.save(path)
    m3 = IndexStore.open(path).manifest["drift"]
    assert m3["added"]["n"] == 0 and m3["since_training"] == m2["since_training"]
    assert m3["latest"]["version"] == 2


def test_transaction_adds_record_drift(trained, rows, tmp_path):
    """What a coordinator or an ingest job does: encode, measure, commit."""
    path = tmp_path / "idx"
    fresh(trained).save(path)
    store = IndexStore.open(path)
    model = shardann.open_index(path)
    x = model.prepare(shifted(rows[1][:1000]))
    list_no, payload = model.encode(x)
    txn = store.transaction()
    txn.add(list_no, np.arange(1000), **payload)
    txn.record_drift(model.drift_stats(x, list_no, payload))
    txn.commit()
    rep = IndexStore.open(path).drift()
    assert rep["since_training"]["n"] == 1000
    assert rep["latest"]["version"] == 2
    assert rep["retrain_recommended"]
    # compaction adds no new data
    IndexStore.open(path).compact(min_rows=10**9)
    assert IndexStore.open(path).manifest["drift"]["since_training"]["n"] == 1000


def test_info_prints_the_drift_section(trained, rows, tmp_path, capsys):
    path = tmp_path / "idx"
    index = fresh(trained)
    index.add(rows[1][:3000])
    index.save(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Drift" in out and "retrain recommended" not in out
    index.add(shifted(rows[1][3000:]))
    index.save(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "retrain recommended" in out
    assert "coarse error, since training" in out and "list imbalance" in out
    assert main(["info", str(path), "--drift-threshold", "100"]) == 0
    assert "retrain recommended" not in capsys.readouterr().out
    assert main(["info", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ntotal"] == 6000 and out["version"] == 2
    assert out["drift"]["retrain_recommended"] and out["drift"]["since_training"]["n"] == 6000
    assert out["list_sizes"]["empty"] == out["drift"]["lists"]["empty"] == 0


def test_flat_and_old_stores_have_no_drift(tmp_path, rows):
    flat = shardann.FlatIndex(D)
    flat.add(rows[0][:100])
    assert flat.drift() is None
    flat.save(tmp_path / "flat")
    assert IndexStore.open(tmp_path / "flat").drift() is None
    assert "drift" not in IndexStore.open(tmp_path / "flat").manifest


def test_ivfflat_measures_the_coarse_error(rows):
    index = shardann.IVFFlatIndex(D, NLIST, seed=0, niter=8).train(rows[0])
    index.add(shifted(rows[1]))
    rep = index.drift()
    assert "pq" not in rep["training"] and "pq" not in rep["since_training"]
    assert rep["since_training"]["coarse"]["ratio"] > 1.3 * DEFAULT_THRESHOLD  # 1.82
    assert rep["retrain_recommended"]


def test_manifest_section_is_json(trained, rows, tmp_path):
    index = fresh(trained)
    index.add(rows[1][:100])
    index.save(tmp_path / "idx")
    raw = json.loads((tmp_path / "idx" / "_manifests" / "v00000001.json").read_text())
    assert set(raw["drift"]) == {"baseline", "added", "since_training", "latest"}
    assert set(raw["drift"]["added"]["pq"]) == {"sum", "sumsq", "over_p90"}


def test_imbalance():
    assert imbalance([2, 2, 2, 2]) == {"max_over_mean": 1.0, "cv": 0.0, "empty": 0}
    out = imbalance([0, 0, 4, 4])
    assert out["max_over_mean"] == 2.0 and out["cv"] == 1.0 and out["empty"] == 2
    assert imbalance([0, 0])["empty"] == 2


def test_report_without_new_rows():
    base = {"n": 10, "coarse": {"mean": 1.0, "std": 0.1, "p50": 1.0, "p90": 1.2}}
    rep = drift_report({"baseline": base, "since_training": {"n": 0}}, [1, 1])
    assert rep["since_training"] == {"n": 0} and not rep["retrain_recommended"]


# -- kernels against NumPy twins -------------------------------------------------------
@pytest.mark.parametrize("nbits,M_", [(8, 4), (4, 8), (5, 4)])
def test_errors_kernel_matches_numpy(nbits, M_, rows):
    x = rows[0][:3000]
    index = shardann.IVFPQIndex(D, NLIST, M_, nbits, seed=0, niter=4, pq_niter=4).train(x)
    labels, payload = index.encode(x)
    for n in (5, 3000):  # the serial and parallel kernels
        got = quantization_errors(x[:n], index.centroids, labels[:n], index.pq,
                                  payload["codes"][:n])
        r = x[:n] - index.centroids[labels[:n]]
        assert np.allclose(got["coarse"], (r * r).sum(1), rtol=1e-4, atol=1e-5)
        e = r - index.pq.decode(payload["codes"][:n])
        assert np.allclose(got["pq"], (e * e).sum(1), rtol=1e-4, atol=1e-5)
        flat = quantization_errors(x[:n], index.centroids, labels[:n])
        assert set(flat) == {"coarse"}
        assert np.allclose(flat["coarse"], (r * r).sum(1), rtol=1e-4, atol=1e-5)
