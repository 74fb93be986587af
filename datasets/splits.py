"""Splits: leave-one-slide-out, leave-one-patient-out, and explicit split files.

A fold is train / val / test slide ids. A split is computed once per dataset and carries no
validation slides; a method that wants one gets it from ``carve_validation``, which moves a
training slide to val without changing the fold's non-test slides.

A fold whose test patient also has slides in train is refused unless the caller allows it:
either explicitly, or because the dataset documents its slide protocol as within-patient
(her2st-mini: leave-one-section-out inside patient C).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flag_bench.datasets.base import SpatialDataset
from flag_bench.errors import UserError
from flag_bench.spec import SplitSpec


@dataclass(frozen=True)
class Fold:
    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def non_test(self) -> tuple[str, ...]:
        """Training and validation slides: what the fold's panel and statistics are fitted on."""
        return (*self.train, *self.val)


@dataclass(frozen=True)
class SplitPlan:
    scheme: str  # "slide", "patient", "hest" or "file:<path>"
    folds: tuple[Fold, ...]
    patient_overlap: bool  # some fold has its test patient in train (recorded in the protocol)
    description: str
    # the scheme's slide order: a validation slide is the first training slide after the test
    # slide in this order, so each fold validates on a different slide
    order: tuple[str, ...]


@dataclass(frozen=True)
class _Folds:
    folds: list[Fold]
    order: tuple[str, ...]
    allow_overlap: bool
    description: str


def carve_validation(plan: SplitPlan, fold: Fold) -> Fold:
    """``fold`` with one validation slide taken from its training slides (the first training
    slide after the test slide in ``plan.order``, wrapping). A split file's own val wins.

    The fold's non-test slides stay the same, so panels fitted on them do not change.
    """
    if fold.val:
        return fold
    train, test = fold.train, fold.test
    if len(train) < 2:
        raise UserError(
            f"a validation slide was requested but the fold testing {','.join(test)} has only "
            f"{len(train)} training slide(s); use a split with more training slides"
        )
    order = plan.order
    start = order.index(test[0]) if test[0] in order else 0
    for i in range(1, len(order) + 1):
        cand = order[(start + i) % len(order)]
        if cand in train:
            return Fold(fold.name, tuple(s for s in train if s != cand), (cand,), test)
    raise ValueError(f"fold '{fold.name}' is not from this split: none of its training slides is in {order}")


def _check_fold(ds: SpatialDataset, fold: Fold, allow_overlap: bool, where: str) -> bool:
    patients = ds.patients
    for sid in (*fold.train, *fold.val, *fold.test):
        if sid not in patients:
            raise UserError(f"{where}: slide '{sid}' is not in dataset {ds.name} (slides: {', '.join(ds.slide_ids)})")
    if not fold.train:
        raise UserError(f"{where}: fold '{fold.name}' has no training slide; every fold needs at least one")
    if not fold.test:
        raise UserError(f"{where}: fold '{fold.name}' has no test slide")
    if set(fold.test) & set(fold.train) or set(fold.test) & set(fold.val):
        raise UserError(f"{where}: fold '{fold.name}' uses a test slide for training or validation")
    test_patients = {patients[s] for s in fold.test}
    train_patients = {patients[s] for s in (*fold.train, *fold.val)}
    overlap = test_patients & train_patients
    if overlap and not allow_overlap:
        raise UserError(
            f"{where}: fold '{fold.name}' tests on patient(s) {', '.join(sorted(overlap))} that also "
            "appear in training; use --split patient, or pass --allow-patient-overlap if this is intended"
        )
    return bool(overlap)


def _slide_folds(ds: SpatialDataset, spec: SplitSpec, allow: bool | None) -> _Folds:
    pool = tuple(ds.default_test_slides or ds.slide_ids)
    within = bool(ds.meta.get("within_patient_slide_protocol", False))
    folds = [Fold(f"test={sid}", tuple(s for s in pool if s != sid), (), (sid,)) for sid in pool]
    desc = f"leave-one-slide-out over {','.join(pool)}" + (" (within-patient)" if within else "")
    return _Folds(folds, pool, within if allow is None else allow, desc)


def _patient_folds(ds: SpatialDataset, spec: SplitSpec, allow: bool | None) -> _Folds:
    order, patients = ds.slide_ids, ds.patients
    plist = sorted(set(patients.values()))
    if len(plist) < 2:
        raise UserError(f"dataset {ds.name} has one patient; --split patient needs at least two")
    # her2st-mini: patient C has the five benchmark sections, so the patient protocol tests on
    # B4 only (C -> B4); testing on C with B4 (283 spots, shallow) as the only train slide is
    # not a meaningful benchmark.
    hold = ds.meta.get("patient_protocol_test_patients")
    folds = [
        Fold(f"test-patient={p}", tuple(s for s in order if patients[s] != p), (),
             tuple(s for s in order if patients[s] == p))
        for p in plist if not hold or p in set(hold)
    ]
    desc = "leave-one-patient-out" + (f" (test patients {','.join(hold)})" if hold else "")
    return _Folds(folds, order, bool(allow), desc)


def _file_folds(ds: SpatialDataset, spec: SplitSpec, allow: bool | None) -> _Folds:
    if not spec.path:
        raise UserError(f"--split {spec}: give the split file as file:PATH")
    path = Path(spec.path)
    return _Folds(read_split_file(path), ds.slide_ids, bool(allow), f"split file {path.name}")


def _hest_folds(ds: SpatialDataset, spec: SplitSpec, allow: bool | None) -> _Folds:
    where = ds.meta.get("hest_splits_dir")
    if not where:
        raise UserError(f"--split hest: dataset {ds.name} has no HEST-Benchmark folds; use a hest-bench: dataset, "
                        "or --split file:DIR for a folder of train_k.csv/test_k.csv")
    path = Path(where)
    return _Folds(read_split_file(path), ds.slide_ids, bool(allow),
                  f"HEST-Benchmark folds of task {ds.meta.get('task', path.parent.name)} (splits/train_k.csv, test_k.csv)")


_SCHEMES: dict[str, Callable[[SpatialDataset, SplitSpec, "bool | None"], _Folds]] = {
    "slide": _slide_folds,
    "patient": _patient_folds,
    "file": _file_folds,
    "hest": _hest_folds,
}


def make_split(ds: SpatialDataset, spec: SplitSpec, *, allow_patient_overlap: bool | None = None) -> SplitPlan:
    """The folds of ``spec`` for ``ds``, with no validation slides (see ``carve_validation``)
    unless a split file names them. Computed once per dataset and shared by every method.

    allow_patient_overlap: None = the dataset decides (its documented within-patient slide
    protocol is allowed), True/False = the user's explicit choice.

    ``default`` resolves to the dataset's own scheme (patient where a loader knows patients, a
    HEST-Benchmark task's folds, her2st-mini's slide protocol); the plan's ``scheme`` is the
    resolved one, so a cell never records "default".
    """
    if spec.kind == "default":
        spec = SplitSpec.parse(ds.default_split)
    build = _SCHEMES.get(spec.kind)
    if build is None:
        raise UserError(f"--split {spec}: unknown scheme; use slide, patient, hest or file:PATH (JSON or HEST-style folder)")
    made = build(ds, spec, allow_patient_overlap)
    overlap = False
    for f in made.folds:
        overlap |= _check_fold(ds, f, made.allow_overlap, f"--split {spec}")
    return SplitPlan(spec.text, tuple(made.folds), overlap, made.description, made.order)


def read_split_file(path: Path) -> list[Fold]:
    """Read folds from a JSON file ``{"folds": [{"name", "train", "val"?, "test"}]}`` or a
    HEST-Benchmark folder of ``train_{i}.csv`` / ``test_{i}.csv`` with a ``sample_id`` column."""
    if not path.exists():
        raise UserError(f"split file {path} does not exist; pass --split file:PATH with an existing file")
    if path.is_dir():
        folds = []
        i = 0
        while (path / f"train_{i}.csv").exists():
            tr = _read_ids(path / f"train_{i}.csv")
            te_path = path / f"test_{i}.csv"
            if not te_path.exists():
                raise UserError(f"{te_path} is missing; each train_i.csv needs a test_i.csv")
            folds.append(Fold(f"split{i}", tr, (), _read_ids(te_path)))
            i += 1
        if not folds:
            raise UserError(f"{path}: no train_0.csv found; a HEST-style split folder holds train_i.csv/test_i.csv")
        return folds
    try:
        data = json.loads(path.read_text())
        raw = data["folds"]
        return [
            Fold(str(f.get("name", f"split{i}")), tuple(f["train"]), tuple(f.get("val", ())), tuple(f["test"]))
            for i, f in enumerate(raw)
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path}: not a valid split file ({type(exc).__name__}: {exc}); expected "
            '{"folds": [{"name": ..., "train": [...], "test": [...]}]}'
        ) from None


def _read_ids(path: Path) -> tuple[str, ...]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "sample_id" not in rows[0]:
        raise UserError(f"{path}: needs a 'sample_id' column (HEST-Benchmark split format)")
    return tuple(r["sample_id"] for r in rows)
