import json

import numpy as np
import pytest
import scipy.sparse as sp

from flag_bench.datasets.base import Slide, SpatialDataset
from flag_bench.datasets.splits import make_split
from flag_bench.errors import UserError


def _ds(patients, **kw):
    slides = tuple(
        Slide(id=f"S{i}", patient=p, counts=sp.csr_matrix(np.ones((3, 2), dtype=np.int32)),
              barcodes=np.array(["a", "b", "c"]), coords=np.zeros((3, 2)), pixel_size_um=1.0,
              spot_diameter_um=55.0)
        for i, p in enumerate(patients)
    )
    return SpatialDataset(name="t", version="v", slides=slides, genes=("g1", "g2"), gene_ids=("", ""), **kw)


def test_leave_one_slide_out_distinct_patients():
    plan = make_split(_ds(["A", "B", "C"]), "slide")
    assert [f.test for f in plan.folds] == [("S0",), ("S1",), ("S2",)]
    for f in plan.folds:
        assert set(f.train) == {"S0", "S1", "S2"} - set(f.test)
    assert not plan.patient_overlap


def test_patient_overlap_refused_unless_allowed_or_documented():
    ds = _ds(["A", "A", "B"])
    with pytest.raises(UserError, match="also appear in training"):
        make_split(ds, "slide")
    assert make_split(ds, "slide", allow_patient_overlap=True).patient_overlap
    documented = _ds(["A", "A", "B"], meta={"within_patient_slide_protocol": True})
    assert make_split(documented, "slide").patient_overlap
    with pytest.raises(UserError):
        make_split(documented, "slide", allow_patient_overlap=False)


def test_patient_split_and_validation_slide():
    ds = _ds(["A", "A", "B", "B"])
    plan = make_split(ds, "patient", with_val=True)
    assert [f.test for f in plan.folds] == [("S0", "S1"), ("S2", "S3")]
    for f in plan.folds:
        assert len(f.val) == 1 and not set(f.val) & set(f.train) and not set(f.val) & set(f.test)
        assert f.train


def test_no_training_slide_is_an_error():
    with pytest.raises(UserError, match="no training slide"):
        make_split(_ds(["A"]), "slide")
    with pytest.raises(UserError, match="validation"):
        make_split(_ds(["A", "B"]), "slide", with_val=True)


def test_split_file_json_and_hest_folder(tmp_path):
    ds = _ds(["A", "B", "C"])
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"folds": [{"name": "x", "train": ["S0", "S1"], "test": ["S2"]}]}))
    plan = make_split(ds, f"file:{f}")
    assert plan.folds[0].test == ("S2",)
    (tmp_path / "hest").mkdir()
    (tmp_path / "hest" / "train_0.csv").write_text("sample_id\nS0\nS1\n")
    (tmp_path / "hest" / "test_0.csv").write_text("sample_id\nS2\n")
    assert make_split(ds, f"file:{tmp_path / 'hest'}").folds[0].train == ("S0", "S1")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        make_split(ds, f"file:{bad}")
    leak = tmp_path / "leak.json"
    leak.write_text(json.dumps({"folds": [{"train": ["S0"], "test": ["S0"]}]}))
    with pytest.raises(UserError, match="test slide for training"):
        make_split(ds, f"file:{leak}")
    with pytest.raises(UserError, match="unknown scheme"):
        make_split(ds, "random")
