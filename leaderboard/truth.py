"""The test truth of a finished cell, rebuilt from its dataset for the results API.

A cell's ``predictions.h5ad`` no longer stores the truth beside the predictions (a later cell's
method could open the file; docs/threat-model.md). ``Results.predictions`` adds
``layers['truth']`` from what the record names: the dataset spec and version, the panel genes
(the file's ``var_names``), the test slides and barcodes (its ``obs``) and the target transform,
through the same steps as the fold builder (panel columns of the raw counts as int32, the spot's
library over the whole candidate pool, ``transform_counts``), so the layer equals the truth the
cell was scored against. A dataset that now loads with another version is refused: its truth
is not the one the cell saw.
"""

from __future__ import annotations

import numpy as np

from flag_bench.errors import UserError


def _memo():
    from flag_bench.datasets.memo import ByteMemo

    # reports read many cells of one dataset: load it once (bounded like the harness's memo)
    return ByteMemo("datasets (truth rebuild)", own_budget=True, keep_newest=True)


_DATASETS = _memo()


def _dataset(spec_text: str):
    from flag_bench.catalog import DATASETS
    from flag_bench.spec import DatasetSpec

    spec = DatasetSpec.parse(spec_text)

    def load():
        return DATASETS.get(DATASETS.check(spec.name))(**spec.kwargs())

    return _DATASETS.get_or_compute(spec.key, load)


def add_truth(adata, record) -> None:
    """Set ``adata.layers['truth']`` (float32, rows in ``adata.obs`` order) from ``record``'s cell."""
    from flag_bench.datasets.fold import transform_counts
    from flag_bench.spec import TargetTransform

    c = record.cell
    where = f"cell {c.cell_id}: rebuilding the test truth from dataset {c.dataset_spec}"
    ds = _dataset(c.dataset_spec)
    if ds.version != c.dataset_version:
        raise UserError(f"{where}: it now loads as version {ds.version}, the cell used {c.dataset_version}; "
                        "load the dataset the cell was computed on")
    pool: dict[str, int] = {}
    for i, g in enumerate(ds.genes):
        pool.setdefault(g, i)
    genes = [str(g) for g in adata.var_names]
    missing = [g for g in genes if g not in pool]
    if missing:
        raise UserError(f"{where}: panel gene(s) {', '.join(missing[:3])} are not in its gene pool")
    idx = np.asarray([pool[g] for g in genes], dtype=np.int64)
    how = TargetTransform(c.target_transform)
    slides = adata.obs["slide"].astype(str).to_numpy()
    barcodes = adata.obs["barcode"].astype(str).to_numpy()
    out = np.empty((adata.n_obs, len(genes)), dtype=np.float32)
    for sid in dict.fromkeys(slides):
        try:
            s = ds.slide(sid)
        except KeyError:
            raise UserError(f"{where}: it has no slide {sid}") from None
        rows = np.flatnonzero(slides == sid)
        at = {str(b): i for i, b in enumerate(s.barcodes)}
        try:
            spots = np.asarray([at[b] for b in barcodes[rows]], dtype=np.int64)
        except KeyError as exc:
            raise UserError(f"{where}: slide {sid} has no spot {exc.args[0]}") from None
        counts = s.counts[:, idx].toarray().astype(np.int32)  # as FoldBuilder._slide_expression
        library = np.asarray(s.counts.sum(axis=1)).ravel()
        out[rows] = transform_counts(counts, library, how)[spots]
    adata.layers["truth"] = out
