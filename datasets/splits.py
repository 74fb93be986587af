"""Splits: leave-one-slide-out, leave-one-patient-out, and explicit split files.

A fold is train / val / test slide ids. A fold whose test patient also has slides in train is
refused unless the caller allows it: either explicitly, or because the dataset documents its
slide protocol as within-patient (her2st-mini: leave-one-section-out inside patient C).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from flag_bench.errors import UserError

from flag_bench.datasets.base import SpatialDataset


@dataclass(frozen=True)
class Fold:
    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"name": self.name, "train": list(self.train), "val": list(self.val), "test": list(self.test)}


@dataclass(frozen=True)
class SplitPlan:
    scheme: str  # "slide", "patient" or "file:<path>"
    folds: tuple[Fold, ...]
    patient_overlap: bool  # some fold has its test patient in train (recorded in the protocol)
    description: str


def _carve_val(train: list[str], test: tuple[str, ...], order: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Take one validation slide from train: the first train slide after the test slide in
    dataset order (wrapping), so each fold validates on a different slide."""
    if len(train) < 2:
        raise UserError(
            f"a validation slide was requested but the fold testing {','.join(test)} has only "
            f"{len(train)} training slide(s); use a split with more training slides"
        )
    start = order.index(test[0]) if test[0] in order else 0
    for i in range(1, len(order) + 1):
        cand = order[(start + i) % len(order)]
        if cand in train:
            return [s for s in train if s != cand], [cand]
    raise AssertionError("unreachable")


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


def make_split(
    ds: SpatialDataset,
    scheme: str,
    *,
    with_val: bool = False,
    allow_patient_overlap: bool | None = None,
) -> SplitPlan:
    """Build the folds of ``scheme`` for ``ds``.

    allow_patient_overlap: None = the dataset decides (its documented within-patient slide
    protocol is allowed), True/False = the user's explicit choice.
    """
    order = ds.slide_ids
    if scheme == "slide":
        pool = tuple(ds.default_test_slides or order)
        within = bool(ds.meta.get("within_patient_slide_protocol", False))
        allow = within if allow_patient_overlap is None else allow_patient_overlap
        folds = []
        for sid in pool:
            train = [s for s in pool if s != sid]
            val: list[str] = []
            if with_val:
                train, val = _carve_val(train, (sid,), pool)
            folds.append(Fold(f"test={sid}", tuple(train), tuple(val), (sid,)))
        desc = f"leave-one-slide-out over {','.join(pool)}"
        if within:
            desc += " (within-patient)"
    elif scheme == "patient":
        allow = bool(allow_patient_overlap)
        patients = ds.patients
        plist = sorted(set(patients.values()))
        if len(plist) < 2:
            raise UserError(f"dataset {ds.name} has one patient; --split patient needs at least two")
        # her2st-mini: patient C has the five benchmark sections, so the patient protocol tests on
        # B4 only (C -> B4); testing on C with B4 (283 spots, shallow) as the only train slide is
        # not a meaningful benchmark.
        hold = ds.meta.get("patient_protocol_test_patients")
        folds = []
        for p in plist:
            if hold and p not in set(hold):
                continue
            test = tuple(s for s in order if patients[s] == p)
            train = [s for s in order if patients[s] != p]
            val: list[str] = []
            if with_val:
                train, val = _carve_val(train, test, order)
            folds.append(Fold(f"test-patient={p}", tuple(train), tuple(val), test))
        desc = "leave-one-patient-out" + (f" (test patients {','.join(hold)})" if hold else "")
    elif scheme.startswith("file:"):
        path = Path(scheme[5:])
        allow = bool(allow_patient_overlap)
        folds = [
            Fold(f.name, f.train, f.val, f.test) if f.val or not with_val else
            Fold(f.name, *map(tuple, _carve_val(list(f.train), f.test, order)), f.test)
            for f in read_split_file(path)
        ]
        desc = f"split file {path.name}"
    else:
        raise UserError(f"--split {scheme}: unknown scheme; use slide, patient or file:PATH (JSON or HEST-style folder)")
    overlap = False
    for f in folds:
        overlap |= _check_fold(ds, f, allow, f"--split {scheme}")
    return SplitPlan(scheme, tuple(folds), overlap, desc)


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
