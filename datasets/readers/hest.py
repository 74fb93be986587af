"""``hest``: a HEST-1k folder (``st/<id>.h5ad``, ``patches/<id>.h5``, ``metadata/<id>.json``,
optional ``wsis/<id>.tif``), read with anndata and h5py.

Spec: ``hest:root=DIR[,ids=A+B,organ=Breast,species=Homo sapiens,technology=Visium,
pixel_size=UM,patch_um=UM,counts=X,duplicate_genes=unique]``
(``counts=`` and ``duplicate_genes=`` as in the ``h5ad`` loader). A list inside one key is joined by ``+`` (``,`` separates keys).

- Patients come from the metadata's ``patient`` (qualified by ``dataset_title`` when two studies
  reuse a name); a sample without one is its own patient. With every patient known the
  dataset's default split is ``patient``.
- Patches are matched to spots by barcode; spots without a patch (HEST's tissue filter) are
  dropped, counted in ``meta['dropped_spots']`` and warned about once.
- Pixel size: ``pixel_size=`` (given) > metadata ``pixel_size_um_estimated`` (HEST's estimate
  from the spot spacing, the one its patches were cut with) > ``pixel_size_um_embedded`` >
  our estimate from the spot spacing (Visium 100 um, ST 200 um pitch) > error.
- A stored patch covers ``patch_size_src`` level-0 pixels (``img`` attributes); a run may ask
  for that width or less, resampled to any number of pixels, or up to one source pixel more
  (HEST rounds 112 um to whole source pixels; the whole stored patch is then used).
- The patches' own ``coords`` (top-left level-0 pixels) must lie on their spots (within a patch
  width): otherwise the h5ad and the patch file use different images and are refused.
- Image-only mode (``flag-bench predict``): per sample ``patches/<id>.h5`` (or ``wsis/<id>.tif``
  with ``st/<id>.h5ad`` for the spot positions) and, for the pixel size, ``metadata/<id>.json``
  or ``pixel_size=``. ``st/<id>.h5ad`` is read without its ``X`` (obs names and
  ``obsm['spatial']``) and may be missing where the patch file has ``coords``: the samples are
  then those of ``st/`` and ``patches/`` together. ``counts=`` and ``duplicate_genes=`` are unused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flag_bench.datasets.base import SpatialDataset
from flag_bench.datasets.readers.build import finish_dataset
from flag_bench.datasets.readers.sample import build_part
from flag_bench.datasets.readers.validate import (PITCH_UM, list_param, need_dir, need_file, positive_float,
                                                  read_json)
from flag_bench.errors import UserError

NAME = "hest"
KEYS = ("root", "ids", "organ", "species", "technology", "pixel_size", "patch_um", "counts", "duplicate_genes")
_FILTERS = {"organ": "organ", "species": "species", "technology": "st_technology"}
WSI_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi")


def spec_text(name: str, params: dict[str, Any]) -> str:
    return f"--datasets {name}:" + ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def check_keys(name: str, params: dict[str, Any], keys: tuple[str, ...], required: tuple[str, ...]) -> str:
    spec = spec_text(name, params)
    unknown = sorted(set(params) - set(keys))
    if unknown:
        raise UserError(f"{spec}: unknown parameter(s) {', '.join(unknown)}; valid keys: {', '.join(keys)}")
    for k in required:
        if params.get(k) in (None, ""):
            raise UserError(f"{spec}: give {k}= (e.g. {name}:{k}=/data/hest)")
    return spec


def platform_of(technology: Any) -> tuple[str, float | None, float]:
    """(platform name, spot pitch um or None, spot diameter um) from HEST's ``st_technology``."""
    t = str(technology or "").lower()
    if "xenium" in t or "visium hd" in t:  # pseudo-spots on a 100-um square grid (HEST's tessellation)
        return str(technology), 100.0, 100.0
    if "visium" in t:
        return "Visium", PITCH_UM["visium"], 55.0
    if "spatial transcriptomics" in t or t == "st":
        return "ST", PITCH_UM["st"], 100.0
    return str(technology or "unknown"), None, 55.0


def patient_ids(metas: dict[str, dict]) -> tuple[dict[str, str], bool]:
    """slide -> patient, and whether every slide's patient is known (names reused by two studies
    are qualified by the study title, as HEST-Benchmark groups by (dataset_title, patient))."""
    raw = {s: (str(m.get("patient")).strip() if m.get("patient") not in (None, "", "nan") else None)
           for s, m in metas.items()}
    titles: dict[str, set] = {}
    for s, p in raw.items():
        if p is not None:
            titles.setdefault(p, set()).add(str(metas[s].get("dataset_title", "")))
    out = {}
    for s, p in raw.items():
        if p is None:
            out[s] = s
        elif len(titles[p]) > 1:
            out[s] = f"{p} ({metas[s].get('dataset_title', '')})"
        else:
            out[s] = p
    return out, all(p is not None for p in raw.values())


def load(*, image_only: bool = False, **params: Any) -> SpatialDataset:
    """``image_only``: spots and images only, no counts read (module docstring)."""
    spec = check_keys(NAME, params, KEYS, ("root",))
    root = need_dir(Path(str(params["root"])).expanduser(), spec, "HEST-1k root", "give the folder holding st/, patches/ and metadata/")
    st_dir = root / "st"
    if image_only:  # the patch files alone give a sample's spots
        ids = sorted({p.stem for p in st_dir.glob("*.h5ad")} | {p.stem for p in (root / "patches").glob("*.h5")})
        if not ids:
            raise UserError(f"{spec}: {root} has neither st/<id>.h5ad nor patches/<id>.h5; give the HEST-1k root")
        where = f"{st_dir}/<id>.h5ad or {root / 'patches'}/<id>.h5"
    else:
        need_dir(st_dir, spec, "HEST-1k st/ folder", "give the HEST-1k root (it holds st/<id>.h5ad)")
        ids = sorted(p.stem for p in st_dir.glob("*.h5ad"))
        where = f"{st_dir}/<id>.h5ad"
    wanted = list_param(params.get("ids"))
    if wanted:
        missing = [i for i in wanted if i not in ids]
        if missing:
            raise UserError(f"{spec}: sample(s) {', '.join(missing)} have no {where}; "
                            f"choose ids from {', '.join(ids[:8])}{'...' if len(ids) > 8 else ''}")
        ids = list(wanted)
    metas = {}
    for sid in ids:
        mp = root / "metadata" / f"{sid}.json"
        metas[sid] = read_json(mp, spec) if mp.is_file() else {}
    for key, field in _FILTERS.items():
        want = params.get(key)
        if want is None:
            continue
        lacking = [s for s in ids if field not in metas[s]]
        if lacking:
            raise UserError(f"{spec}: {root / 'metadata' / (lacking[0] + '.json')} has no '{field}' to filter "
                            f"{key}= on; add the metadata file or drop {key}=")
        ok = {v.lower() for v in list_param(want) or ()}
        ids = [s for s in ids if str(metas[s][field]).lower() in ok]
    if not ids:
        raise UserError(f"{spec}: no sample of {root} matches the filters; loosen organ=/species=/technology=")
    patients, known = patient_ids({s: metas[s] for s in ids})
    parts, platforms, species, corpora = [], set(), set(), ["HEST-1k"]
    for sid in ids:
        m = metas[sid]
        platform, pitch, diameter = platform_of(m.get("st_technology"))
        diameter = positive_float(m.get("spot_diameter")) or diameter
        patch_file = root / "patches" / f"{sid}.h5"
        patches: Path | None = patch_file
        image = None
        if not patch_file.is_file():
            wsis = [root / "wsis" / f"{sid}{s}" for s in WSI_SUFFIXES]
            image = next((w for w in wsis if w.is_file()), None)
            if image is None:
                need_file(patch_file, spec, "patch file", f"download patches/{sid}.h5 (or wsis/{sid}.tif), or leave "
                          f"{sid} out with ids=")
            patches = None
        est = positive_float(m.get("pixel_size_um_estimated"))
        st_path: Path | None = st_dir / f"{sid}.h5ad"
        if image_only and not (st_dir / f"{sid}.h5ad").is_file():
            st_path = None
        part = build_part(
            sid=sid, patient=patients[sid], st_path=st_path, patches=patches, image=image, spec=spec,
            pixel_size=params.get("pixel_size"), embedded=positive_float(m.get("pixel_size_um_embedded")),
            embedded_detail=f"metadata/{sid}.json pixel_size_um_embedded", pitch_um=pitch, spot_diameter_um=diameter,
            patch_um=params.get("patch_um"), counts_source=params.get("counts"),
            duplicate_genes=params.get("duplicate_genes"), image_only=image_only,
            meta={k: m[k] for k in ("organ", "species", "st_technology", "dataset_title", "oncotree_code",
                                    "disease_state", "license") if k in m},
            recorded=None if est is None else (est, "estimated from spot spacing",
                                               f"metadata/{sid}.json pixel_size_um_estimated (HEST's estimate)"),
        )
        parts.append(part)
        platforms.add(platform)
        if m.get("species"):
            species.add(str(m["species"]))
        if m.get("dataset_title"):
            corpora.append(str(m["dataset_title"]))
    organism = "mouse" if species == {"Mus musculus"} else ("human" if species <= {"Homo sapiens"} else "+".join(sorted(species)))
    return finish_dataset(parts, name=NAME, spec=spec, platform="+".join(sorted(platforms)), organism=organism,
                          corpora=tuple(corpora), patients_known=known, image_only=image_only,
                          meta={"root": str(root), "patient_source": "metadata 'patient'" if known else
                                "unknown for some samples: each such sample is its own patient"})
