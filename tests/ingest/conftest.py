import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray runtime (2 CPUs) per test module, shut down afterwards."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()
