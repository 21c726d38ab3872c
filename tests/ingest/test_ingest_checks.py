"""`shardann ingest` checks its arguments and inputs before Ray starts (no Ray here):
a bad parameter is a usage error (status 2) in well under a second, a bad file one
line naming it (status 1); conversions of non-float32 inputs are said once."""

import logging
import time

import numpy as np
import pytest
from ingest_support import data, write_parquet

from shardann.cli import main


@pytest.fixture()
def no_ray(monkeypatch):
    """Make starting Ray an error: the checks must happen before it."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called before the arguments were checked")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture()
def npy(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, data(300))
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--nlist", "16", "--M", "7"], "d must be a multiple of M; got d=32, M=7"),
    (["--nlist", "16", "--M", "8", "--nbits", "9"], "nbits must be <= 8; got 9"),
    (["--nlist", "0", "--M", "8"], "nlist must be >= 1; got 0"),
    (["--nlist", "16", "--M", "8", "--address", "auto", "--num-cpus", "2"], "--num-cpus"),
])
def test_bad_parameters_are_usage_errors_before_ray(tmp_path, npy, no_ray, capsys, args,
                                                    message):
    t0 = time.perf_counter()
    status = main(["ingest", str(tmp_path / "idx"), npy, "--no-progress", *args])
    err = capsys.readouterr().err
    assert status == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "idx").exists()


def test_appending_with_contradicting_parameters_is_refused_before_ray(tmp_path, npy, no_ray,
                                                                       capsys):
    import shardann

    index = shardann.IVFPQIndex(32, 8, 8, seed=0, niter=2, pq_niter=2)
    index.train(data(400, seed=3))
    index.save(tmp_path / "idx")
    status = main(["ingest", str(tmp_path / "idx"), npy, "--nlist", "99", "--no-progress"])
    assert status == 2
    assert "do not pass nlist=99" in capsys.readouterr().err


def test_a_junk_npy_file_is_named_as_not_a_npy_file(tmp_path, no_ray, capsys):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"this is not numpy" * 10)
    status = main(["ingest", str(tmp_path / "idx"), str(junk), "--nlist", "4", "--M", "8"])
    err = capsys.readouterr().err
    assert status == 1
    assert "junk.npy: not a valid .npy file" in err and "pickled" not in err


def test_float64_inputs_are_converted_and_said_once(tmp_path, caplog):
    from shardann.distributed._ingest_plan import plan_inputs

    x = data(200)
    np.save(tmp_path / "a.npy", x.astype(np.float64))
    np.save(tmp_path / "b.npy", x.astype(np.float64))
    write_parquet(str(tmp_path / "c.parquet"), x, "fsl16")  # list<double>
    write_parquet(str(tmp_path / "d.parquet"), x)            # float32: nothing to say
    with caplog.at_level(logging.INFO, logger="shardann"):
        plan_inputs(str(tmp_path))
    notes = [r.getMessage() for r in caplog.records if "converted to float32" in r.getMessage()]
    assert notes == [f"3 input file(s) hold float64 values (e.g. {tmp_path / 'a.npy'}); they "
                     "are converted to float32"]


def _write_lists(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"embedding": pa.array(rows, pa.list_(pa.float32()))}), path)
    return str(path)


def test_an_empty_parquet_file_is_named(tmp_path, no_ray, capsys):
    empty = _write_lists(tmp_path / "empty.parquet", [])
    assert main(["ingest", str(tmp_path / "idx"), empty, "--nlist", "4", "--M", "4"]) == 1
    err = capsys.readouterr().err
    assert "empty.parquet (no rows)" in err and len(err.strip().splitlines()) == 1, err


def test_ragged_rows_say_which_row_has_which_length(tmp_path, no_ray, capsys, caplog):
    from shardann.distributed._ingest_plan import plan_inputs

    # the first row is the odd one: the dimension is the one most rows have
    one_odd = _write_lists(tmp_path / "one.parquet", [[0.5] * 31] + [[0.5] * 32] * 9)
    with caplog.at_level(logging.WARNING):
        assert plan_inputs([one_odd]).d == 32
    assert "row 0 has 31" in caplog.text
    # no majority: refused, naming rows and lengths, not "d must be a multiple of M"
    split = _write_lists(tmp_path / "split.parquet", [[0.5] * 31] * 2 + [[0.5] * 32] * 2)
    assert main(["ingest", str(tmp_path / "idx"), split, "--nlist", "4", "--M", "8"]) == 1
    err = capsys.readouterr().err
    assert "row 0 has 31, row 2 has 32" in err and "multiple of M" not in err, err
