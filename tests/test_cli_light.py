"""`flag-bench run --dry-run` (the default grid) and `flag-bench show METHOD` import no torch (nor
torch_geometric, MLflow, transformers, timm): each runs in a fresh interpreter that then lists
which of those modules it holds. Not a timing test: benchmarks/bench_cli_latency.py times them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flag_bench.catalog import CONFIG_HOMES

HEAVY = ("torch", "torch_geometric", "mlflow", "transformers", "timm")

_SCRIPT = """
import json, runpy, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["flag-bench", *json.loads(sys.argv[1])]
code = 0
try:
    runpy.run_module("flag_bench.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print("HEAVY=" + json.dumps([m for m in heavy if m in sys.modules]))
sys.exit(code)
"""


def _run(args: list[str], cwd) -> tuple[list[str], str]:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args), json.dumps(HEAVY)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    marker = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY=")]
    assert marker, proc.stdout + proc.stderr
    return json.loads(marker[-1][len("HEAVY="):]), proc.stdout


def test_dry_run_of_the_default_grid_imports_no_torch(tmp_path):
    heavy, out = _run(["run", "--dry-run"], cwd=tmp_path)
    assert "dry run: nothing is computed" in out and "her2st-mini" in out
    assert heavy == []
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("method", ["flag", "stem", "mean", *sorted(set(CONFIG_HOMES) - {"flag", "stem"})])
def test_show_imports_no_torch(method, tmp_path):
    heavy, out = _run(["show", method], cwd=tmp_path)
    assert out.startswith(f"{method} (built-in") and "tiny/small/paper" in out  # the card, then the presets
    assert heavy == []
