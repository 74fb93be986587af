"""The README's example config file is valid: it parses, plans and dry-runs as documented."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.config import build_config

README = Path(__file__).resolve().parent.parent / "README.md"


def _example_toml() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README should hold exactly one complete example config"
    return blocks[0]


def test_readme_example_config_parses_and_plans(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(_example_toml())
    cfg = build_config(path, {})
    assert cfg.methods == ("mean", "ridge", "knn", "stem") and dict(cfg.method_overrides["knn"]) == {"k": 20}
    res = CliRunner().invoke(app, ["run", "--config", str(path), "--dry-run", "--encoder", "color-stats",
                                   "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    # 2 datasets x 2 G x 4 methods x 2 folds x 3 seeds
    assert "= 96 cells" in res.output and not (tmp_path / "r").exists()
