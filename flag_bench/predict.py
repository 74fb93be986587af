"""Apply a saved model to slides without counts (`flag-bench predict`, issue 25).

A saved model (``flag_bench/models.py``: a cell's fitted method, its genes, patch, encoder and
target transform) predicts on any dataset that serves its needs. The dataset is loaded
image-only (``resolve.dataset(spec, image_only=True)``: counts neither read nor needed), the
test views are built the way a cell builds its test fold (``datasets/unlabelled.py``), and the
predictions are written as an AnnData file that scanpy and squidpy plot directly:

- ``X``: float32 (spots x the model's genes, in its order), in the model's target space
  (``uns['flag_bench']['values']`` says which, e.g. natural log of (1 + UMI count));
- ``obs``: ``slide``, ``barcode`` (index ``slide:barcode``);
- ``obsm['spatial']``: spot centres in full-resolution pixels of each slide's image (what
  ``sc.pl.spatial`` expects, as Space Ranger writes them); ``obsm['spatial_um']`` in micrometres;
- ``uns['spatial'][slide]``: scanpy's layout: ``scalefactors`` (``spot_diameter_fullres``,
  ``tissue_hires_scalef``) and, where the slide has images, ``images['hires']``: the H&E composed
  from the spots' tiles over [0, side] um of the slide, so
  ``sc.pl.spatial(adata[adata.obs.slide == S], library_id=S, color=GENE)`` draws over the tissue;
- ``uns['flag_bench']``: the model's cell id, method, target transform and what its values are,
  encoder, patch, the dataset and the flag-bench version.

``plot_maps`` draws the PNG: one panel per gene per slide over the H&E.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from flag_bench import resolve
from flag_bench.errors import CellFailure, UserError
from flag_bench.io import atomic_write, atomic_write_bytes
from flag_bench.spec import DatasetSpec, TargetTransform

if TYPE_CHECKING:
    from flag_bench.datasets.base import SpatialDataset
    from flag_bench.datasets.encoders import Encoder
    from flag_bench.datasets.views import TestData
    from flag_bench.methods.base import Method

# genes drawn when none are named: this many of the model's genes, those whose predictions vary
# most across the spots (a flat map shows nothing)
DEFAULT_PLOT_GENES = 4
# side in pixels of the H&E kept per slide (scanpy's "hires" image; Space Ranger's is 2000)
HE_PX = 1000
DPI = 100
PANEL_IN = 2.6  # inches per map panel


@dataclasses.dataclass(frozen=True, eq=False)
class Predictions:
    """What a saved model predicted on a dataset. ``values`` follow ``test.slides``: float32
    (n_spots, G) each, G = the model's genes in order; ``he`` per slide: (uint8 (px, px, 3) H&E
    over [0, side_um]^2 um, side_um) or None where the slide has no images."""

    test: TestData
    values: tuple[np.ndarray, ...]
    dataset: SpatialDataset
    dataset_spec: str
    he: dict[str, tuple[np.ndarray, float] | None]


def model_encoder(info: Any) -> Encoder:
    """The model's encoder as this machine resolves it, checked against the one it was fitted
    with (a foundation model's weights enter its identity: other weights, other numbers)."""
    from flag_bench.cell import recorded_encoder

    return recorded_encoder(str(info.encoder), _encoder_identity(info), dict(getattr(info, "encoder_info", None) or {}),
                            whose=f"the model {info.cell_id}", fix="give the same weights file")


def _encoder_identity(info: Any) -> str:
    """The encoder coordinate of the model's cell: name@version for user-supplied weights."""
    return str(getattr(info, "encoder_identity", "") or info.encoder)


def load_image_only(spec_text: str) -> tuple[str, SpatialDataset]:
    """(canonical spec, the dataset loaded image-only)."""
    spec = DatasetSpec.parse(spec_text)
    return spec.key, resolve.dataset(spec, image_only=True)


def check_servable(ds: SpatialDataset, info: Any, spec_key: str) -> None:
    """Refuse, in one line, a model whose prediction needs or patch this dataset cannot serve."""
    from flag_bench.datasets.readers.images import field_limit
    from flag_bench.datasets.unlabelled import missing_needs

    missing = missing_needs(ds, info.needs)
    if missing:
        no_image = [s.id for s in ds.slides if s.tile_reader is None]
        why = (f": slide(s) {', '.join(no_image[:3])} have no image or patches (give image= or patches= in the "
               "spec)" if no_image and set(missing) & {"tiles", "embeddings", "region"} else "")
        raise UserError(f"model {info.cell_id} (method {info.method}) needs {', '.join(missing)}, which dataset "
                        f"{spec_key} does not provide{why}")
    if set(info.needs) & {"tiles", "embeddings", "region"}:
        limit, tol = field_limit([s.tile_reader for s in ds.slides])
        if limit is not None and float(info.patch_um) > limit + tol + 1e-6:
            raise UserError(f"model {info.cell_id} reads {float(info.patch_um):g}-um patches, but dataset {spec_key} "
                            f"stores patches of at most {limit:g} um; give the slides' image instead of patches")


def predict_dataset(method: Method, info: Any, ds: SpatialDataset, *, spec_key: str, device: str,
                    cache_dir: str | None = None, seed: int = 0) -> Predictions:
    """Predict every slide of ``ds`` with a fitted ``method`` described by ``info`` (ModelInfo).

    The test views carry the model's genes, patch, encoder and target transform; a generative
    method's prediction is the mean of its draws, as a cell scores it (one sampling pass).
    """
    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.unlabelled import prediction_views
    from flag_bench.methods.base import seed_everything
    from flag_bench.scoring import check_predictions, check_samples

    check_servable(ds, info, spec_key)
    needs_embeddings = "embeddings" in info.needs
    patch = PatchSpec(float(info.patch_um), int(info.patch_px))
    test = prediction_views(
        ds, genes=tuple(info.genes), gene_ids=getattr(info, "gene_ids", None),
        target_transform=TargetTransform(info.target_transform), patch=patch,
        encoder=model_encoder(info) if needs_embeddings else None, embeddings=needs_embeddings,
        device=device, cache_dir=cache_dir, encoder_resolver=resolve.encoder_resolver())
    seed_everything(seed)  # the same draws on every call for a generative model
    samples = method.predict_samples(test)
    if samples is not None:
        drawn = check_samples(info.method, samples, test)
        preds = [s.mean(axis=0) for s in drawn]
    else:
        preds = method.predict(test)
    values = check_predictions(info.method, preds, test)
    he = {s.slide_id: _he_image(s) for s in test.slides}
    return Predictions(test=test, values=tuple(np.asarray(v, dtype=np.float32) for v in values), dataset=ds,
                       dataset_spec=spec_key, he=he)


def _he_image(slide) -> tuple[np.ndarray, float] | None:
    """(uint8 (HE_PX, HE_PX, 3) H&E over [0, side]^2 um of the slide, side um), or None without
    images. Anchored at the origin so full-resolution pixels map to it by one scale factor
    (scanpy's ``tissue_hires_scalef``)."""
    if slide.image is None or slide.n_spots == 0:
        return None
    coords = np.asarray(slide.coords_um, dtype=np.float64)
    side = float(coords.max()) + 2.0 * float(slide.image.patch.size_um)
    img = slide.image.region((side / 2.0, side / 2.0), side, HE_PX)
    return np.ascontiguousarray(img, dtype=np.uint8), side


def to_anndata(pred: Predictions, info: Any):
    """The prediction file's AnnData (module docstring)."""
    import anndata as ad
    import pandas as pd

    from flag_bench import __version__
    from flag_bench.datasets.fold import TARGET_MEANINGS

    test, ds = pred.test, pred.dataset
    obs = pd.DataFrame({
        "slide": np.concatenate([np.full(s.n_spots, s.slide_id, dtype=object) for s in test.slides]),
        "barcode": np.concatenate([np.asarray(s.barcodes).astype(str).astype(object) for s in test.slides]),
    })
    obs.index = pd.Index((obs["slide"] + ":" + obs["barcode"]).to_numpy().astype(str))
    obs["slide"] = obs["slide"].astype("category")
    var = pd.DataFrame(index=pd.Index([str(g) for g in info.genes]))
    ids = getattr(info, "gene_ids", None)
    if ids and any(ids):
        var["gene_ids"] = [str(i) for i in ids]
    adata = ad.AnnData(X=np.concatenate(pred.values).astype(np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = np.concatenate([np.asarray(ds.slide(s.slide_id).coords, dtype=np.float64)
                                            for s in test.slides])
    adata.obsm["spatial_um"] = np.concatenate([np.asarray(s.coords_um, dtype=np.float64) for s in test.slides])
    adata.uns["spatial_unit"] = ("obsm['spatial']: full-resolution pixels of each slide's image; "
                                 "obsm['spatial_um']: micrometres")
    transform = TargetTransform(info.target_transform)
    adata.uns["flag_bench"] = {
        "kind": "predictions of a saved model (no truth)",
        "model_cell_id": str(info.cell_id),
        "method": str(info.method),
        "target_transform": transform.value,
        "values": f"predicted {TARGET_MEANINGS[transform]}",
        "encoder": _encoder_identity(info),
        "encoder_info": json.dumps(getattr(info, "encoder_info", None) or {}, sort_keys=True, default=str),
        "patch_um": float(info.patch_um),
        "patch_px": int(info.patch_px),
        "trained_on": json.dumps(getattr(info, "trained_on", None), sort_keys=True, default=str),
        "dataset": pred.dataset_spec,
        "dataset_version": ds.version,
        "flag_bench_version": __version__,
    }
    spatial: dict[str, Any] = {}
    for s in test.slides:
        slide = ds.slide(s.slide_id)
        px_um = float(slide.pixel_size_um)
        scalefactors: dict[str, float] = {"spot_diameter_fullres": float(slide.spot_diameter_um) / px_um}
        entry: dict[str, Any] = {"images": {}, "scalefactors": scalefactors,
                                 "metadata": {"pixel_size_um": px_um, "source": "flag-bench predict"}}
        he = pred.he.get(s.slide_id)
        if he is not None:
            img, side = he
            entry["images"]["hires"] = img
            # full-resolution px -> um (x px_um) -> image px (x HE_PX / side)
            scalefactors["tissue_hires_scalef"] = px_um * img.shape[1] / side
        spatial[s.slide_id] = entry
    adata.uns["spatial"] = spatial
    return adata


def write_h5ad(adata, path: Path) -> Path:
    """Write atomically (a crash leaves the previous file or none, never a torn one)."""
    if path.suffix != ".h5ad":
        raise UserError(f"--output {path}: give a file name ending in .h5ad")
    try:
        # gzip: the H&E images in uns are mostly white glass (a tenth of the size, half a second)
        return atomic_write(path, lambda p: adata.write_h5ad(p, compression="gzip"))
    except OSError as exc:
        raise UserError(f"--output {path}: cannot write it ({exc.strerror or exc}); choose a writable folder") from None


def choose_genes(pred: Predictions, genes: Sequence[str], named: Sequence[str] | None,
                 k: int = DEFAULT_PLOT_GENES) -> tuple[str, ...]:
    """The genes to draw: ``named`` (each must be a model gene, else a one-line UserError
    listing a few it predicts), or the ``k`` whose predictions vary most over all spots."""
    genes = tuple(genes)
    if named:
        unknown = [g for g in named if g not in genes]
        if unknown:
            raise UserError(f"--genes-to-plot: the model does not predict {', '.join(unknown[:5])}; it predicts "
                            f"{len(genes)} genes, e.g. {', '.join(genes[:8])}")
        return tuple(dict.fromkeys(named))
    x = np.concatenate(pred.values)
    order = np.argsort(-x.var(axis=0), kind="stable")
    return tuple(genes[i] for i in order[:k])


def plot_maps(pred: Predictions, info: Any, genes: Sequence[str]):
    """A matplotlib Figure: one row per slide, the H&E then one map per gene (the prediction at
    each spot, drawn at the spot's true diameter); one colour scale per gene over all slides
    (its 1st-99th percentile)."""
    from matplotlib.figure import Figure

    from flag_bench.datasets.fold import TARGET_MEANINGS

    test = pred.test
    col = {g: i for i, g in enumerate(info.genes)}
    lead = 1 if any(h is not None for h in pred.he.values()) else 0
    nrow, ncol = len(test.slides), len(genes) + lead
    fig = Figure(figsize=(PANEL_IN * ncol + 0.4, PANEL_IN * nrow + 0.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    allv = np.concatenate(pred.values)
    scale = {}
    for g in genes:
        lo, hi = np.percentile(allv[:, col[g]], [1, 99])
        scale[g] = (float(lo), float(hi) if hi > lo else float(lo) + 1e-6)
    mappables: dict[str, Any] = {}
    for r, (s, vals) in enumerate(zip(test.slides, pred.values)):
        coords = np.asarray(s.coords_um, dtype=np.float64)
        he = pred.he.get(s.slide_id)
        lo_xy = coords.min(axis=0) - s.spot_diameter_um
        hi_xy = coords.max(axis=0) + s.spot_diameter_um
        span = float((hi_xy - lo_xy).max())
        # a marker's diameter in points: the spot's true size at this panel's scale
        size = (PANEL_IN * 72.0 * 0.85 * s.spot_diameter_um / max(span, 1e-9)) ** 2
        for c in range(ncol):
            ax = axes[r, c]
            if he is not None:
                img, side = he
                ax.imshow(img, extent=(0.0, side, side, 0.0), zorder=0)
            if c >= lead:
                g = genes[c - lead]
                mappables[g] = ax.scatter(coords[:, 0], coords[:, 1], c=vals[:, col[g]], s=size, cmap="magma",
                                          vmin=scale[g][0], vmax=scale[g][1], lw=0, zorder=1)
                ax.set_title(f"{s.slide_id}: {g}", fontsize=8)
            else:
                ax.set_title(f"{s.slide_id}: H&E" if he is not None else f"{s.slide_id}: no image", fontsize=8)
            ax.set_xlim(lo_xy[0], lo_xy[0] + span)
            ax.set_ylim(lo_xy[1] + span, lo_xy[1])  # image convention: y grows downwards
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    for c, g in enumerate(genes):
        fig.colorbar(mappables[g], ax=axes[:, c + lead], shrink=0.6, location="bottom")
    meaning = TARGET_MEANINGS[TargetTransform(info.target_transform)]
    fig.suptitle(f"{info.method} (model {str(info.cell_id)[:12]}) on {pred.dataset.name}: predicted {meaning}",
                 fontsize=9)
    return fig


def write_png(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    try:
        return atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise UserError(f"--plot {path}: cannot write it ({exc.strerror or exc}); choose a writable folder") from None


@dataclasses.dataclass(frozen=True)
class Written:
    h5ad: Path
    png: Path
    genes_plotted: tuple[str, ...]
    chosen: bool  # the plotted genes were chosen here (none named)
    n_spots: int
    n_slides: int


def run_predict(method: Method, info: Any, *, dataset_spec: str, output: Path, plot: Path | None = None,
                genes_to_plot: Sequence[str] | None = None, device: str = "cpu",
                cache_dir: str | None = None, seed: int = 0) -> Written:
    """Load ``dataset_spec`` image-only, predict with the fitted ``method`` (``info``: its
    ModelInfo), write ``output`` (.h5ad) and the maps PNG (``plot``, default beside ``output``)."""
    output = Path(output)
    if output.suffix != ".h5ad":
        raise UserError(f"--output {output}: give a file name ending in .h5ad")
    png = Path(plot) if plot is not None else output.with_suffix(".png")
    if png.suffix.lower() != ".png":
        raise UserError(f"--plot {png}: give a file name ending in .png")
    if genes_to_plot:
        unknown = [g for g in genes_to_plot if g not in set(info.genes)]
        if unknown:  # before any tile is read
            raise UserError(f"--genes-to-plot: the model does not predict {', '.join(unknown[:5])}; it predicts "
                            f"{len(info.genes)} genes, e.g. {', '.join(tuple(info.genes)[:8])}")
    spec_key, ds = load_image_only(dataset_spec)
    try:
        pred = predict_dataset(method, info, ds, spec_key=spec_key, device=device, cache_dir=cache_dir, seed=seed)
    except CellFailure as exc:
        raise UserError(f"model {info.cell_id}: {exc}") from None
    genes = choose_genes(pred, info.genes, genes_to_plot)
    write_h5ad(to_anndata(pred, info), output)
    write_png(plot_maps(pred, info, genes), png)
    return Written(h5ad=output, png=png, genes_plotted=genes, chosen=not genes_to_plot,
                   n_spots=sum(s.n_spots for s in pred.test.slides), n_slides=len(pred.test.slides))
