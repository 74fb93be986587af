"""``hest-bench``: a HEST-Benchmark task folder (``adata/<id>.h5ad``, ``patches/<id>.h5``,
``splits/train_k.csv`` + ``test_k.csv``, ``var_50genes.json``).

Spec: ``hest-bench:root=DIR,task=IDC[,pixel_size=UM,patch_um=UM,pitch_um=100,counts=X,
duplicate_genes=unique]`` (``root/task``
is the task folder; without ``task=`` ``root`` is the task folder itself).

- ``--split hest`` runs the task's own folds (``meta['hest_splits_dir']``).
- Patients: the task folder has no metadata, and its folds hold out one patient group each, so
  the samples of a fold's test file form one patient group (``patient`` = ``group<k>``); a
  ``metadata/<id>.json`` beside ``adata/`` with a ``patient`` wins.
- ``var_50genes.json`` / ``mean_50genes.json`` were chosen on all samples of the task, test
  samples included: they are listed in ``meta['test_informed_files']``, and ``--panel
  file:<task>/var_50genes.json`` reproduces the official protocol, marked test-informed. The
  default panel stays fitted on each fold's training slides.
- Pixel size: ``pixel_size=`` > metadata > estimated from the spot spacing (``pitch_um``,
  default 100 um: Visium, and HEST's 100-um Xenium pseudo-spots).
- Image-only mode (``flag-bench predict``): needs ``splits/`` (the samples) and
  ``patches/<id>.h5``; ``adata/<id>.h5ad`` is read without its ``X`` where present, else the
  patch file's ``barcode`` and ``coords`` give the spots. ``counts=`` and ``duplicate_genes=``
  are unused.
"""

from __future__ import annotations

import dataclasses

import csv
from pathlib import Path
from typing import Any

from flag_bench.datasets.base import SpatialDataset
from flag_bench.datasets.readers.build import finish_dataset
from flag_bench.datasets.readers.hest import check_keys, patient_ids
from flag_bench.datasets.readers.sample import build_part
from flag_bench.datasets.readers.validate import need_dir, need_file, positive_float, read_json
from flag_bench.errors import UserError

NAME = "hest-bench"
KEYS = ("root", "task", "pixel_size", "patch_um", "pitch_um", "counts", "duplicate_genes")


def _fold_files(splits: Path, spec: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    folds, k = [], 0
    while (splits / f"train_{k}.csv").is_file():
        te = need_file(splits / f"test_{k}.csv", spec, "split file", f"each train_{k}.csv needs a test_{k}.csv")
        folds.append((_ids(splits / f"train_{k}.csv", spec), _ids(te, spec)))
        k += 1
    if not folds:
        raise UserError(f"{spec}: {splits} has no train_0.csv; give a HEST-Benchmark task folder (splits/train_k.csv)")
    return folds


def _ids(path: Path, spec: str) -> tuple[str, ...]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "sample_id" not in rows[0]:
        raise UserError(f"{spec}: {path} needs a 'sample_id' column (HEST-Benchmark split format)")
    return tuple(r["sample_id"] for r in rows)


def load(*, image_only: bool = False, **params: Any) -> SpatialDataset:
    """``image_only``: spots and patches only, no counts read (module docstring)."""
    spec = check_keys(NAME, params, KEYS, ("root",))
    root = Path(str(params["root"])).expanduser()
    task_dir = root / str(params["task"]) if params.get("task") is not None else root
    need_dir(task_dir, spec, "HEST-Benchmark task folder", "give root= the bench data root and task= a task such as IDC")
    adata_dir = task_dir / "adata"
    if not image_only:
        need_dir(adata_dir, spec, "adata/ folder", "give a HEST-Benchmark task folder (adata/, patches/, splits/)")
    splits = need_dir(task_dir / "splits", spec, "splits/ folder", "give a HEST-Benchmark task folder (adata/, patches/, splits/)")
    folds = _fold_files(splits, spec)
    ids = list(dict.fromkeys(s for tr, te in folds for s in (*tr, *te)))
    metas = {s: (read_json(task_dir / "metadata" / f"{s}.json", spec)
                 if (task_dir / "metadata" / f"{s}.json").is_file() else {}) for s in ids}
    if all(m.get("patient") not in (None, "") for m in metas.values()):
        patients, source = patient_ids(metas)[0], "metadata 'patient'"
    else:
        group: dict[str, str] = {}
        for k, (_, te) in enumerate(folds):
            for s in te:
                group.setdefault(s, f"group{k}")
        patients = {s: group.get(s, s) for s in ids}
        source = "test group of the task's folds (one held-out patient group per fold)"
    pitch = positive_float(params.get("pitch_um")) or 100.0
    parts = []
    for sid in ids:
        st: Path | None = None
        if not image_only or (adata_dir / f"{sid}.h5ad").is_file():
            st = need_file(adata_dir / f"{sid}.h5ad", spec, "expression file",
                           f"the split files name {sid}: restore adata/{sid}.h5ad")
        patches = need_file(task_dir / "patches" / f"{sid}.h5", spec, "patch file",
                            f"the split files name {sid}: restore patches/{sid}.h5")
        m = metas[sid]
        est = positive_float(m.get("pixel_size_um_estimated"))
        part = build_part(sid=sid, patient=patients[sid], st_path=st, patches=patches, image=None, spec=spec,
                          pixel_size=params.get("pixel_size"), embedded=None, embedded_detail="", pitch_um=pitch,
                          spot_diameter_um=positive_float(m.get("spot_diameter")) or 55.0,
                          patch_um=params.get("patch_um"), meta={"task": task_dir.name},
                          counts_source=params.get("counts"), duplicate_genes=params.get("duplicate_genes"),
                          image_only=image_only, recorded=None if est is None else (est, "estimated from spot spacing",
                                                             f"metadata/{sid}.json pixel_size_um_estimated (HEST's estimate)"))
        parts.append(part)
    informed = tuple(str((task_dir / n).resolve()) for n in ("var_50genes.json", "mean_50genes.json")
                     if (task_dir / n).is_file())
    titles = [str(m["dataset_title"]) for m in metas.values() if m.get("dataset_title")]
    ds = finish_dataset(parts, name=NAME, spec=spec, platform="Visium", organism="human",
                        corpora=("HEST-1k", "HEST-Benchmark", *titles), patients_known=False, image_only=image_only,
                        meta={"root": str(task_dir), "task": task_dir.name, "hest_splits_dir": str(splits.resolve()),
                              "hest_folds": len(folds), "test_informed_files": informed, "patient_source": source})
    # the task's own folds are the benchmark's protocol
    return dataclasses.replace(ds, default_split="hest")
