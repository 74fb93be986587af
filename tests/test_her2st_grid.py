"""The real embedded dataset through the whole driver (cheap encoder, controls only)."""

from __future__ import annotations

import numpy as np
import pytest

from flag_bench.config import RunConfig
from flag_bench.datasets.her2st_mini import load
from flag_bench.datasets.splits import carve_validation, make_split
from flag_bench.driver import Driver
from flag_bench.spec import SplitSpec
from flag_bench.store import ResultsStore


def test_default_protocols_on_her2st_mini():
    ds = load()
    slide = make_split(ds, SplitSpec("slide"), allow_patient_overlap=None)
    assert [f.test for f in slide.folds] == [("C2",), ("C3",), ("C4",), ("C5",), ("C6",)]
    assert all("B4" not in f.train for f in slide.folds) and slide.patient_overlap
    assert [carve_validation(slide, f).val for f in slide.folds] == [("C3",), ("C4",), ("C5",), ("C6",), ("C2",)]
    patient = make_split(ds, SplitSpec("patient"), allow_patient_overlap=None)
    (fold,) = patient.folds
    carved = carve_validation(patient, fold)
    assert fold.test == ("B4",) and set(carved.train) | set(carved.val) == {"C2", "C3", "C4", "C5", "C6"}
    assert not patient.patient_overlap


@pytest.mark.slow
def test_controls_on_her2st_mini_rank_as_expected(tmp_path):
    cfg = RunConfig(methods=("mean", "ridge", "knn"), genes=(50,), encoder="color-stats", folds=(0, 2),
                    device="cpu", results_dir=str(tmp_path / "r"))
    s = Driver(cfg).run()
    assert s.ok == 6 and not s.failed
    by: dict[str, list] = {}
    for r in ResultsStore(cfg.results_dir).records():
        by.setdefault(r.cell.method, []).append(r.scores["pcc_mean"])
        assert len(r.panel.genes) == 50
    assert np.allclose(by["mean"], 0.0)
    # even colour statistics of real H&E patches carry expression signal
    assert np.mean(by["ridge"]) > 0.1 and np.mean(by["knn"]) > 0.05
