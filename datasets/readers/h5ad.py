"""``h5ad``: any AnnData with ``obsm['spatial']`` (spot centres in image pixels) and raw counts
in ``X``, with an image or a HEST-style patch file.

Spec: ``h5ad:path=FILE_OR_DIR[,patches=FILE_OR_DIR,image=FILE,patient=NAME,pixel_size=UM,
patch_um=UM,pitch_um=100,counts=X,duplicate_genes=unique]``. A folder reads every ``*.h5ad`` in it; ``patches=`` then names a
folder of ``<stem>.h5`` files. ``image=`` needs a single file.

- Patients: ``patient=`` (single file), else a constant ``obs['patient']`` column, else each file
  is its own patient.
- Counts: raw counts from ``X`` (default), ``counts=raw`` (``.raw.X``) or ``counts=NAME``
  (``layers[NAME]``, e.g. ``counts=counts``). NaN, inf, negative, non-integer (log-normalised)
  or > int32 values are refused in one line naming the file and the field.
- Repeated gene names are made unique the AnnData way (``GENE``, ``GENE-1``, ...) with a
  warning, never overwritten; ``duplicate_genes=sum`` adds the copies up instead.
- Pixel size: ``pixel_size=`` > ``uns['flag_bench']['pixel_size_um']`` or the image's resolution
  tags (embedded) > estimated from the spot spacing with ``pitch_um`` (default 100 um, Visium)
  > error.
- Image-only mode (``flag-bench predict``): needs obs names (barcodes), ``obsm['spatial']`` and
  the image or patches; ``X`` is never read and may be empty (no genes) or absent, and
  ``counts=`` and ``duplicate_genes=`` are unused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from flag_bench.datasets.base import SpatialDataset
from flag_bench.datasets.readers.build import finish_dataset
from flag_bench.datasets.readers.hest import check_keys
from flag_bench.datasets.readers.sample import build_part
from flag_bench.datasets.readers.validate import need_file, positive_float
from flag_bench.errors import UserError

NAME = "h5ad"
KEYS = ("path", "patches", "image", "patient", "pixel_size", "patch_um", "pitch_um", "counts", "duplicate_genes")


def _peek(path: Path) -> dict[str, Any]:
    """uns['flag_bench'] pixel and spot sizes (written by SpatialDataset.to_anndata), without loading X."""
    import h5py

    out: dict[str, Any] = {}
    try:
        with h5py.File(path, "r") as f:
            fb = f.get("uns/flag_bench")
            if fb is not None:
                for k in ("pixel_size_um", "spot_diameter_um"):
                    if k in fb:
                        out[k] = fb[k][()]
    except OSError:
        pass  # read_adata reports an unreadable file with its own message
    return out


def load(*, image_only: bool = False, **params: Any) -> SpatialDataset:
    """``image_only``: spots and images only, ``X`` not read (module docstring)."""
    spec = check_keys(NAME, params, KEYS, ("path",))
    path = Path(str(params["path"])).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.h5ad"))
        if not files:
            raise UserError(f"{spec}: {path} holds no .h5ad file; give a file or a folder of .h5ad files")
        if params.get("image") is not None:
            raise UserError(f"{spec}: image= needs a single path= file; give one .h5ad per image")
    else:
        files = [need_file(path, spec, "AnnData file", "give path= an existing .h5ad file or folder")]
    patches = Path(str(params["patches"])).expanduser() if params.get("patches") is not None else None
    image = Path(str(params["image"])).expanduser() if params.get("image") is not None else None
    if image is not None:
        need_file(image, spec, "image", "give image= an existing full-resolution H&E file")
    pitch = positive_float(params.get("pitch_um")) or 100.0
    parts, known = [], params.get("patient") is not None
    for f in files:
        sid = f.stem
        pf = None
        if patches is not None:
            pf = patches / f"{sid}.h5" if patches.is_dir() else patches
            need_file(pf, spec, "patch file", f"give patches= the HEST-style .h5 of {f.name} (or a folder of <stem>.h5)")
        peek = _peek(f)
        emb = positive_float(peek.get("pixel_size_um"))
        part = build_part(sid=sid, patient=str(params.get("patient") or sid), st_path=f, patches=pf, image=image,
                          spec=spec, pixel_size=params.get("pixel_size"), embedded=emb,
                          embedded_detail=f"uns['flag_bench']['pixel_size_um'] of {f.name}", pitch_um=pitch,
                          spot_diameter_um=positive_float(peek.get("spot_diameter_um")) or 55.0,
                          patch_um=params.get("patch_um"), meta={},
                          counts_source=params.get("counts"), duplicate_genes=params.get("duplicate_genes"),
                          image_only=image_only)
        parts.append(part)
    if not known:
        import anndata as ad

        found = 0
        for p in parts:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*names are not unique")
                obs = ad.read_h5ad(p.meta["st_file"], backed="r").obs
            if "patient" in obs.columns and obs["patient"].nunique() == 1:
                p.patient = str(obs["patient"].iloc[0])
                found += 1
        known = found == len(parts)
    return finish_dataset(parts, name=NAME, spec=spec, platform="unknown", organism="unknown", corpora=(),
                          patients_known=known, image_only=image_only, meta={"patient_source": "given or obs['patient']" if known else
                                                      "unknown: each file is its own patient"})
