"""--executor ray on a local Ray cluster: the same grid gives the serial scores; each record
names the Ray task that computed it; a missing extra is a one-line error."""

from __future__ import annotations

import pytest

from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.store import ResultsStore
from services import ENGINE_GRID, store_scores

pytest_plugins = [__name__.rpartition(".")[0] + ".services" if "." in __name__ else "services"]
pytestmark = pytest.mark.slow

BASE = ENGINE_GRID
_scores = store_scores


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local cluster for the module (start + stop cost seconds): 2 CPUs, a capped object store."""
    import importlib
    import os

    note_engine = importlib.import_module(pytest_plugins[0]).note_engine

    ray = pytest.importorskip("ray", reason="pip install 'flag-bench[ray]'")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
    except Exception as exc:
        note_engine("ray", f"SKIPPED ({type(exc).__name__})")
        pytest.skip(f"a local Ray cluster could not start: {exc}")
    note_engine("ray", "ran (local cluster, 2 CPUs)")
    yield ray
    ray.shutdown()


def test_ray_gives_the_serial_scores(local_ray, tmp_path):
    serial = Driver(RunConfig(**BASE, results_dir=str(tmp_path / "serial"))).run()
    ray_run = Driver(RunConfig(**BASE, results_dir=str(tmp_path / "ray"), executor="ray")).run()
    assert serial.ok == ray_run.ok == 6 and not serial.failed and not ray_run.failed
    assert ray_run.executor == "ray"
    assert _scores(tmp_path / "serial") == _scores(tmp_path / "ray")
    node = local_ray.get_runtime_context().get_node_id()
    for rec in ResultsStore(tmp_path / "ray").records():
        sched = rec.provenance["scheduler"]
        assert sched["engine"] == "ray" and sched["node_id"] == node and sched["cpus"] == 1
    assert local_ray.is_initialized()  # a cluster the driver joined stays up


def test_missing_ray_is_one_line(monkeypatch):
    from services import hide_module

    hide_module(monkeypatch, "ray")
    from flag_bench.cluster.ray import require_ray
    from flag_bench.errors import UserError

    with pytest.raises(UserError, match=r"^--executor ray needs Ray: pip install 'flag-bench\[ray\]'$"):
        require_ray()
