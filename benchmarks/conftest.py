"""pytest-benchmark set-up for ``pytest benchmarks/ --benchmark-only`` (see benchmarks/README.md).

pyproject's addopts carry ``--benchmark-disable`` so the test suite never times anything; inside
benchmarks/ the timings are the point, so this conftest turns them back on. It also points the
storage at the committed baseline (``benchmarks/baseline/``; ``.benchmarks/`` is git-ignored) and,
unless ``--benchmark-compare`` is given, compares against the newest saved ``*_baseline`` run, so
the short command both runs and compares.

The hooks here run before pytest-benchmark's own ``pytest_configure`` (``trylast``), which is where
it reads these options.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BASELINE_DIR = HERE / "baseline"
BASELINE_NAME = "baseline"  # saved with --benchmark-save=baseline: files NNNN_baseline.json
TESTS = HERE.parent / "tests"

# tests/report_demo.py writes the report benchmark's results store (test support, not shipped)
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def _given(config: pytest.Config, flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in config.invocation_params.args)


def newest_baseline(storage: Path, machine_id: str) -> Path | None:
    """This machine kind's newest ``NNNN_baseline.json``, else any machine kind's newest (compared
    with pytest-benchmark's "machine_info is different" warning), else None."""
    pattern = f"[0-9][0-9][0-9][0-9]_{BASELINE_NAME}.json"
    own = sorted((storage / machine_id).glob(pattern))
    if own:
        return own[-1]
    anywhere = sorted(storage.glob(f"*/{pattern}"), key=lambda p: p.name)
    return anywhere[-1] if anywhere else None


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "benchmark_enable"):  # pytest-benchmark not installed
        return
    if not _given(config, "--benchmark-disable"):  # a --benchmark-disable typed here still wins
        config.option.benchmark_enable = True  # beats the addopts' --benchmark-disable
    if not _given(config, "--benchmark-sort"):  # a benchmark's NOW and baseline rows side by side
        config.option.benchmark_sort = "name"
    if not _given(config, "--benchmark-storage"):
        config.option.benchmark_storage = f"file://{BASELINE_DIR}"
    if _given(config, "--benchmark-compare") or not config.option.benchmark_storage.startswith(f"file://{BASELINE_DIR}"):
        return
    from pytest_benchmark.utils import get_machine_id

    found = newest_baseline(BASELINE_DIR, get_machine_id())
    if found is not None:
        config.option.benchmark_compare = str(found)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # embeddings computed by the benchmarks never land in the user's cache
    mp = pytest.MonkeyPatch()
    mp.setenv("FLAG_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "embed-cache"))
    yield
    mp.undo()
