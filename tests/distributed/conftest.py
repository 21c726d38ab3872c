import pytest

# ray_local: tests/conftest.py


@pytest.fixture(scope="module")
def data():
    from shardann.bench.datasets import synthetic_split
    xb, xq, xt = synthetic_split(6000, 60, 32, nt=3000, seed=3)
    return xb, xq, xt
