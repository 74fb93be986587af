"""The real embedded dataset through the whole runner (cheap encoder, controls only)."""

from __future__ import annotations

import numpy as np

from flag_bench.config import RunConfig
from flag_bench.datasets.her2st_mini import load
from flag_bench.datasets.splits import make_split
from flag_bench.runner import Runner
from flag_bench.store import ResultsStore


def test_default_protocols_on_her2st_mini():
    ds = load()
    slide = make_split(ds, "slide")
    assert [f.test for f in slide.folds] == [("C2",), ("C3",), ("C4",), ("C5",), ("C6",)]
    assert all("B4" not in f.train for f in slide.folds) and slide.patient_overlap
    patient = make_split(ds, "patient", with_val=True)
    (fold,) = patient.folds
    assert fold.test == ("B4",) and set(fold.train) | set(fold.val) == {"C2", "C3", "C4", "C5", "C6"}
    assert not patient.patient_overlap


def test_controls_on_her2st_mini_rank_as_expected(tmp_path):
    cfg = RunConfig(methods=("mean", "ridge", "knn"), genes=(50,), encoder="color-stats", folds=(0, 2),
                    device="cpu", results_dir=str(tmp_path / "r"))
    s = Runner(cfg).run()
    assert s.ok == 6 and not s.failed
    by = {}
    for r in ResultsStore(cfg.results_dir).records():
        by.setdefault(r["cell"]["method"], []).append(r["scores"]["pcc_mean"])
        assert len(r["panel"]["genes"]) == 50
    assert np.allclose(by["mean"], 0.0)
    # even colour statistics of real H&E patches carry expression signal
    assert np.mean(by["ridge"]) > 0.1 and np.mean(by["knn"]) > 0.05
