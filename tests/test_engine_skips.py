"""An engine test whose engine is missing skips, saying why; under CI (CI=true) it fails instead,
so a broken install step cannot leave CI green (tests/services.py: missing_engine). No real engine
is needed: the helpers are called directly, and once through pytest's own runner."""

from __future__ import annotations

import pytest

import services
from services import missing_engine, require_module

pytest_plugins = ["pytester"]
WHY = "daemon-x not installed (apt-get install daemon-x)"


@pytest.fixture
def engines(monkeypatch, tmp_path):
    """An empty engine summary and an engines file of this test's own."""
    monkeypatch.setattr(services, "_ENGINES", {})
    path = tmp_path / "engines.txt"
    monkeypatch.setenv("FLAG_BENCH_ENGINES_FILE", str(path))
    return path


@pytest.mark.parametrize("value", [None, "", "false", "0", "1"])
def test_outside_ci_a_missing_engine_skips_with_the_reason(engines, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="daemon-x not installed"):
        missing_engine("engine-x", WHY)
    assert services._ENGINES == {"engine-x": f"SKIPPED ({WHY})"}
    assert engines.read_text() == f"engine-x: SKIPPED ({WHY})\n"


@pytest.mark.parametrize("value", ["true", "True", "TRUE"])
def test_under_ci_a_missing_engine_fails_with_the_reason(engines, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="engine-x is missing under CI=true.*daemon-x not installed"):
        missing_engine("engine-x", WHY)
    assert services._ENGINES == {"engine-x": f"FAILED ({WHY})"}
    assert engines.read_text() == f"engine-x: FAILED ({WHY})\n"


def test_require_module_returns_the_module_or_reports_the_engine_missing(engines, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert require_module("engine-x", "json", "pip install json") is __import__("json")
    services.hide_module(monkeypatch, "daemon_x_client")
    with pytest.raises(pytest.skip.Exception, match="daemon_x_client not importable.*pip install daemon-x"):
        require_module("engine-x", "daemon_x_client", "pip install daemon-x")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="daemon_x_client not importable.*pip install daemon-x"):
        require_module("engine-x", "daemon_x_client", "pip install daemon-x")


def test_a_test_outcome_is_skipped_normally_and_failed_under_ci(pytester, monkeypatch, engines):
    """Through pytest itself: in a test body the outcome is skipped, or failed under CI; in a fixture
    (tests/conftest.py: chromium) it is skipped, or an error under CI: either way not a pass."""
    monkeypatch.setattr(services, "chromium_path", lambda: None)
    here = pytester.path
    (here / "conftest_under_test.py").write_text((services.Path(services.__file__).parent / "conftest.py").read_text())
    pytester.makeconftest("from conftest_under_test import chromium  # noqa: F401\n")
    pytester.makepyfile(test_engines="import services\n\n"
                                     "def test_body():\n    services.missing_engine('engine-x', 'daemon-x not installed')\n\n"
                                     "def test_browser(chromium):\n    assert chromium\n")
    monkeypatch.delenv("CI", raising=False)
    pytester.runpytest_inprocess().assert_outcomes(skipped=2)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*engine-x is missing under CI=true*daemon-x not installed*"])
    result.stdout.fnmatch_lines(["*chromium is missing under CI=true*apt-get install chromium*"])
