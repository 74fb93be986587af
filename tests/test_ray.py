"""--executor ray on a local Ray cluster: the same grid gives the serial scores; each record
names the Ray task that computed it; a missing extra is a one-line error."""

from __future__ import annotations

import pytest

from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.store import ResultsStore
from services import ENGINE_GRID, missing_engine, require_module, store_scores

pytest_plugins = [__name__.rpartition(".")[0] + ".services" if "." in __name__ else "services"]
pytestmark = pytest.mark.slow

BASE = ENGINE_GRID
_scores = store_scores


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local cluster for the module (start + stop cost seconds): 2 CPUs, a capped object store."""
    import importlib

    note_engine = importlib.import_module(pytest_plugins[0]).note_engine

    ray = require_module("ray", "ray", "pip install 'flag-bench[ray]'")
    from flag_bench.cluster.ray import start_local

    try:
        # flag-bench's own local start (loopback, Ray's token auth on), with a private temp dir
        start_local(num_cpus=2, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    except Exception as exc:
        missing_engine("ray", f"a local Ray cluster could not start: {type(exc).__name__}: {exc}")
    note_engine("ray", "ran (local cluster, 2 CPUs)")
    yield ray
    ray.shutdown()


def _loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip.split("%")[0])
    return addr.is_loopback or bool(getattr(addr, "ipv4_mapped", None) and addr.ipv4_mapped.is_loopback)


def test_local_cluster_is_loopback_only_with_auth_on(tmp_path, monkeypatch):
    """The cluster `--executor ray` starts itself (no --ray-address) listens on 127.0.0.1 only and
    keeps Ray's token authentication on, without writing a token into the user's home. Runs before
    the module's shared cluster exists (tests run in file order)."""
    ray = require_module("ray", "ray", "pip install 'flag-bench[ray]'")
    psutil = pytest.importorskip("psutil")
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already up in this process")
    from ray._raylet import AuthenticationMode, get_authentication_mode

    from flag_bench.cluster.ray import RayExecutor

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default, whatever the caller's shell says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where Ray would write ~/.ray/auth_token
    ex = RayExecutor(RunConfig(**BASE, results_dir=str(tmp_path / "ray"), executor="ray"))
    try:
        try:
            ex._init()
        except Exception as exc:  # as the fixture below: a machine too busy to start Ray in time
            missing_engine("ray", f"a local Ray cluster could not start: {type(exc).__name__}: {exc}")
        assert get_authentication_mode() == AuthenticationMode.TOKEN
        assert ray._private.worker._global_node.node_ip_address == "127.0.0.1"
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42  # a worker reaches the cluster
        me, listening = psutil.Process(), []
        for p in [me, *me.children(recursive=True)]:  # the GCS, raylet and workers Ray started
            try:
                listening += [(p.name(), c.laddr.ip) for c in p.net_connections("tcp")
                              if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:
                pass
        assert listening and all(_loopback(ip) for _, ip in listening), listening
    finally:
        ex.shutdown()
    assert not ray.is_initialized()
    assert not (tmp_path / "home" / ".ray").exists()


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
