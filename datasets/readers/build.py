"""Assembling a dataset from per-slide parts: shared gene pool, content-hash version, meta.

``version`` hashes what changes the numbers: per slide the id, patient, barcodes, coordinates,
pixel size, the CSR counts' arrays, and the tile source (HDF5 or image path with its size and
mtime, the matched rows and the stored field). Hashing counts and coordinates is milliseconds for
20,000 spots; the patch pixels are not read (gigabytes): a rewritten patch file changes size or
mtime, so the version, and with it the embedding cache key, changes too (a copy of the folder
gets a new version and is re-embedded: conservative, never stale).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from flag_bench.datasets.base import Slide, SpatialDataset
from flag_bench.errors import UserError


@dataclass
class SlidePart:
    """One slide before the gene pools are aligned. counts: CSR (n_spots, len(genes))."""

    id: str
    patient: str
    counts: sp.csr_matrix
    barcodes: np.ndarray
    coords: np.ndarray
    genes: tuple[str, ...]
    gene_ids: tuple[str, ...]
    pixel_size_um: float
    spot_diameter_um: float
    tile_reader: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    source_key: tuple = ()  # what identifies the tile source for the version hash
    dropped: int = 0  # spots dropped for want of a patch


def as_count_matrix(x, spec: str, where: str) -> sp.csr_matrix:
    """Any AnnData X -> int32 CSR; non-integer or negative values are not raw counts -> UserError."""
    m = sp.csr_matrix(x)
    data = m.data
    if data.size and (np.any(data < 0) or not np.allclose(data, np.round(data))):
        raise UserError(f"{spec}: {where} holds non-integer or negative values, not raw counts; "
                        "give the raw count matrix (HEST st/*.h5ad X, or layers['counts'] copied to X)")
    out = sp.csr_matrix((np.round(data).astype(np.int32), m.indices, m.indptr), shape=m.shape)
    out.sum_duplicates()
    return out


def _common_genes(parts: list[SlidePart], spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    common = set(parts[0].genes)
    for p in parts[1:]:
        common &= set(p.genes)
    genes = tuple(g for g in parts[0].genes if g in common)
    if not genes:
        raise UserError(f"{spec}: the slides share no gene; give slides measured on the same gene set")
    ids = dict(zip(parts[0].genes, parts[0].gene_ids))
    return genes, tuple(ids.get(g, "") for g in genes)


def content_version(parts: list[SlidePart], genes: tuple[str, ...], extra: Any = ()) -> str:
    h = hashlib.sha256()

    def put(x) -> None:
        h.update(x if isinstance(x, bytes) else repr(x).encode())
        h.update(b"\0")

    put(genes)
    put(extra)
    for p in parts:
        put((p.id, p.patient, p.pixel_size_um, p.spot_diameter_um, p.source_key))
        put("\n".join(map(str, p.barcodes)).encode())
        put(np.ascontiguousarray(p.coords, dtype=np.float64).tobytes())
        for a in (p.counts.data, p.counts.indices, p.counts.indptr):
            put(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def file_key(path: Path | None) -> tuple:
    if path is None:
        return ()
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def finish_dataset(parts: list[SlidePart], *, name: str, spec: str, platform: str, organism: str,
                   corpora: tuple[str, ...], patients_known: bool, meta: dict[str, Any] | None = None,
                   licence: str = "", citation: str = "") -> SpatialDataset:
    """Align every slide to the shared gene pool and build the dataset (warns once about drops)."""
    if not parts:
        raise UserError(f"{spec}: no slide selected; check the folder and the filters in the spec")
    ids = [p.id for p in parts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise UserError(f"{spec}: slide id(s) {', '.join(dup)} appear twice; give each sample a unique id")
    genes, gene_ids = _common_genes(parts, spec)
    slides = []
    for p in parts:
        pos = {g: i for i, g in enumerate(p.genes)}
        cols = np.array([pos[g] for g in genes], dtype=np.int64)
        counts = p.counts if len(cols) == len(p.genes) and np.array_equal(cols, np.arange(len(cols))) \
            else sp.csr_matrix(p.counts[:, cols])
        slides.append(Slide(
            id=p.id, patient=p.patient, counts=counts, barcodes=np.asarray(p.barcodes).astype(str),
            coords=np.asarray(p.coords, dtype=np.float64), pixel_size_um=float(p.pixel_size_um),
            spot_diameter_um=float(p.spot_diameter_um), tile_reader=p.tile_reader,
            meta={**p.meta, "n_genes_in_file": len(p.genes)},
        ))
    dropped = {p.id: p.dropped for p in parts if p.dropped}
    if dropped:
        warnings.warn(f"{spec}: dropped {sum(dropped.values())} spot(s) without a patch "
                      f"({', '.join(f'{k}: {v}' for k, v in dropped.items())})", stacklevel=3)
    meta = dict(meta or {})
    meta.update({
        "corpora": tuple(dict.fromkeys(corpora)),
        "dropped_spots": dropped,
        "genes_dropped_not_shared": {p.id: len(p.genes) - len(genes) for p in parts if len(p.genes) != len(genes)},
        "patients_known": patients_known,
        "spec": spec,
    })
    version = content_version(parts, genes, (name, platform))
    return SpatialDataset(
        name=name, version=version, slides=tuple(slides), genes=genes,
        gene_ids=gene_ids, organism=organism, platform=platform, licence=licence, citation=citation,
        default_split="patient" if patients_known and len({p.patient for p in parts}) > 1 else "slide",
        meta=meta,
    )
