import json

import numpy as np
import pytest
import scipy.sparse as sp

from flag_bench.datasets.base import Slide, SpatialDataset
from flag_bench.datasets.splits import Fold, carve_validation, make_split
from flag_bench.errors import UserError
from flag_bench.spec import SplitSpec

SLIDE, PATIENT = SplitSpec("slide"), SplitSpec("patient")


def _ds(patients, **kw):
    slides = tuple(
        Slide(id=f"S{i}", patient=p, counts=sp.csr_matrix(np.ones((3, 2), dtype=np.int32)),
              barcodes=np.array(["a", "b", "c"]), coords=np.zeros((3, 2)), pixel_size_um=1.0,
              spot_diameter_um=55.0)
        for i, p in enumerate(patients)
    )
    return SpatialDataset(name="t", version="v", slides=slides, genes=("g1", "g2"), gene_ids=("", ""), **kw)


def test_leave_one_slide_out_distinct_patients():
    plan = make_split(_ds(["A", "B", "C"]), SLIDE)
    assert [f.test for f in plan.folds] == [("S0",), ("S1",), ("S2",)]
    for f in plan.folds:
        assert set(f.train) == {"S0", "S1", "S2"} - set(f.test)
    assert not plan.patient_overlap


def test_patient_overlap_refused_unless_allowed_or_documented():
    ds = _ds(["A", "A", "B"])
    with pytest.raises(UserError, match="also appear in training"):
        make_split(ds, SLIDE)
    assert make_split(ds, SLIDE, allow_patient_overlap=True).patient_overlap
    documented = _ds(["A", "A", "B"], meta={"within_patient_slide_protocol": True})
    assert make_split(documented, SLIDE).patient_overlap
    with pytest.raises(UserError):
        make_split(documented, SLIDE, allow_patient_overlap=False)


def test_patient_split_and_validation_slide():
    ds = _ds(["A", "A", "B", "B"])
    plan = make_split(ds, PATIENT)
    assert [f.test for f in plan.folds] == [("S0", "S1"), ("S2", "S3")]
    assert all(f.val == () for f in plan.folds), "a split carries no validation slides"
    for f in plan.folds:
        carved = carve_validation(plan, f)
        assert len(carved.val) == 1 and not set(carved.val) & set(carved.train)
        assert not set(carved.val) & set(carved.test) and carved.train
        assert set(carved.non_test) == set(f.train) and carved.test == f.test
    # the first training slide after the test slide in dataset order, wrapping
    assert [carve_validation(plan, f).val for f in plan.folds] == [("S2",), ("S0",)]


def test_no_training_slide_is_an_error():
    with pytest.raises(UserError, match="no training slide"):
        make_split(_ds(["A"]), SLIDE)
    plan = make_split(_ds(["A", "B"]), SLIDE, allow_patient_overlap=True)
    with pytest.raises(UserError, match="validation slide was requested .* only 1 training slide"):
        carve_validation(plan, plan.folds[0])


def test_split_file_json_and_hest_folder(tmp_path):
    ds = _ds(["A", "B", "C"])
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"folds": [{"name": "x", "train": ["S0", "S1"], "test": ["S2"]}]}))
    plan = make_split(ds, SplitSpec.parse(f"file:{f}"))
    assert plan.folds[0].test == ("S2",)
    (tmp_path / "hest").mkdir()
    (tmp_path / "hest" / "train_0.csv").write_text("sample_id\nS0\nS1\n")
    (tmp_path / "hest" / "test_0.csv").write_text("sample_id\nS2\n")
    assert make_split(ds, SplitSpec.parse(f"file:{tmp_path / 'hest'}")).folds[0].train == ("S0", "S1")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        make_split(ds, SplitSpec.parse(f"file:{bad}"))
    leak = tmp_path / "leak.json"
    leak.write_text(json.dumps({"folds": [{"train": ["S0"], "test": ["S0"]}]}))
    with pytest.raises(UserError, match="test slide for training"):
        make_split(ds, SplitSpec.parse(f"file:{leak}"))
    with pytest.raises(UserError, match="unknown scheme"):
        make_split(ds, SplitSpec("random"))
    with pytest.raises(UserError, match="--split random: unknown"):
        SplitSpec.parse("random")
    with pytest.raises(UserError, match="file:PATH"):
        make_split(ds, SplitSpec("file"))
    missing = tmp_path / "nope.json"
    with pytest.raises(UserError, match="does not exist"):
        make_split(ds, SplitSpec.parse(f"file:{missing}"))


def test_split_file_validation_wins_and_carving_follows_dataset_order(tmp_path):
    ds = _ds(["A", "B", "C", "D"])
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"folds": [
        {"name": "given", "train": ["S0", "S1"], "val": ["S3"], "test": ["S2"]},
        {"name": "carved", "train": ["S3", "S0", "S1"], "test": ["S2"]},
    ]}))
    plan = make_split(ds, SplitSpec.parse(f"file:{f}"))
    given, carved = plan.folds
    assert given.val == ("S3",) and carve_validation(plan, given) == given
    assert carved.val == ()
    assert carve_validation(plan, carved) == Fold("carved", ("S0", "S1"), ("S3",), ("S2",))


def test_slide_scheme_carves_in_the_test_pool_order():
    """The old rule: the slide scheme's order is the dataset's default test slides."""
    ds = _ds(["A", "A", "A", "A"], default_test_slides=("S3", "S1", "S2"),
             meta={"within_patient_slide_protocol": True})
    plan = make_split(ds, SLIDE)
    assert plan.order == ("S3", "S1", "S2")
    assert [(f.test, carve_validation(plan, f).val) for f in plan.folds] == [
        (("S3",), ("S1",)), (("S1",), ("S2",)), (("S2",), ("S3",))]
    with pytest.raises(ValueError, match="not from this split"):
        carve_validation(plan, Fold("x", ("S0", "S9"), (), ("S3",)))
