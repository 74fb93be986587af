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


INT32_MAX = int(np.iinfo(np.int32).max)
DUPLICATE_GENES = ("unique", "sum")


def as_count_matrix(x, spec: str, where: str, fix: str = "give the raw count matrix") -> sp.csr_matrix:
    """Any count matrix (dense, sparse, any numeric dtype) -> int32 CSR of raw counts.

    NaN, infinite, negative, non-integer and > int32 values are not raw UMI counts: each is a
    one-line ``UserError`` naming ``where`` (the file and its field) and ``fix``, never a cast
    that wraps (``inf`` and values above 2^31 used to become -2147483648).
    """
    try:
        m = sp.csr_matrix(x)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{spec}: {where} is not a numeric matrix ({type(exc).__name__}); {fix}") from None
    if m.dtype == bool or not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
        raise UserError(f"{spec}: {where} holds {m.dtype} values, not counts; {fix}")
    data = m.data
    if data.size:
        if np.issubdtype(data.dtype, np.floating):
            for bad, what in ((np.isnan(data), "NaN (missing)"), (np.isinf(data), "infinite")):
                if bad.any():
                    raise UserError(f"{spec}: {where} holds {int(bad.sum())} {what} value(s), not raw counts; {fix}")
        lo, hi = data.min(), data.max()
        if lo < 0:
            raise UserError(f"{spec}: {where} holds {int((data < 0).sum())} negative value(s) (min {lo:g}), "
                            f"not raw counts; {fix}")
        if np.issubdtype(data.dtype, np.floating):
            if np.abs(data - np.round(data)).max() > 1e-6:  # float noise on integers is rounded away
                raise UserError(f"{spec}: {where} holds non-integer values (log-normalised?), not raw counts; {fix}")
            data = np.round(data)
        if hi > INT32_MAX:
            raise UserError(f"{spec}: {where} holds values above {INT32_MAX} (max {hi:g}), too large for raw "
                            f"counts; {fix}")
    out = sp.csr_matrix((data.astype(np.int32), m.indices, m.indptr), shape=m.shape)
    out.sum_duplicates()
    return out


def unique_names(names) -> tuple[str, ...]:
    """AnnData's ``var_names_make_unique``: the first copy keeps its name, later copies become
    ``NAME-1``, ``NAME-2``, ... (skipping a suffix another name already has)."""
    names = [str(n) for n in names]
    if len(set(names)) == len(names):
        return tuple(names)
    counter: dict[str, int] = {}
    taken, first, out = set(names), set(), []
    for n in names:
        if n not in first:
            first.add(n)
            out.append(n)
            continue
        while True:
            counter[n] = counter.get(n, 0) + 1
            new = f"{n}-{counter[n]}"
            if new not in taken:
                taken.add(new)
                out.append(new)
                break
    return tuple(out)


def check_duplicate_genes(mode: Any, spec: str) -> str:
    """The ``duplicate_genes=`` parameter: ``unique`` (default) or ``sum``."""
    mode = "unique" if mode in (None, "") else str(mode).strip().lower()
    if mode not in DUPLICATE_GENES:
        raise UserError(f"{spec}: duplicate_genes={mode!r} must be one of {', '.join(DUPLICATE_GENES)}")
    return mode


def resolve_duplicate_genes(counts: sp.csr_matrix, genes, gene_ids, mode: Any, spec: str,
                            where: str) -> tuple[sp.csr_matrix, tuple[str, ...], tuple[str, ...]]:
    """Repeated gene names of one file, never overwritten: ``unique`` renames later copies the
    AnnData way (``GENE``, ``GENE-1``, ...), ``sum`` adds their columns into the first copy's
    (keeping its gene id). Either warns once, naming the file and the count."""
    mode = check_duplicate_genes(mode, spec)
    genes = tuple(str(g) for g in genes)
    gene_ids = tuple(str(g) for g in gene_ids)
    if len(set(genes)) == len(genes):
        return counts, genes, gene_ids
    first: dict[str, int] = {}
    for i, g in enumerate(genes):
        first.setdefault(g, i)
    n_dup = len(genes) - len(first)
    example = next(g for i, g in enumerate(genes) if first[g] != i)
    if mode == "sum":
        order = list(first)
        index = {g: k for k, g in enumerate(order)}
        col = np.array([index[g] for g in genes], dtype=np.int64)
        merge = sp.csr_matrix((np.ones(len(genes), dtype=np.int64), (np.arange(len(genes)), col)),
                              shape=(len(genes), len(order)))
        summed = sp.csr_matrix(counts.astype(np.int64) @ merge)
        if summed.data.size and summed.data.max() > INT32_MAX:
            raise UserError(f"{spec}: {where}: summing the duplicate gene columns exceeds {INT32_MAX}; "
                            "use duplicate_genes=unique")
        out = sp.csr_matrix(summed.astype(np.int32))
        warnings.warn(f"{spec}: {where} repeats {n_dup} gene name(s) (e.g. {example}); their columns were summed "
                      "(duplicate_genes=sum)", UserWarning, stacklevel=3)
        return out, tuple(order), tuple(gene_ids[first[g]] for g in order)
    uniq = unique_names(genes)
    warnings.warn(f"{spec}: {where} repeats {n_dup} gene name(s) (e.g. {example}); later copies were renamed "
                  f"{example}-1, ... (add duplicate_genes=sum to the spec to add them up instead)",
                  UserWarning, stacklevel=3)
    return counts, uniq, gene_ids


def check_spots(n: int, spec: str, where: str, fix: str) -> None:
    """A slide with no spot cannot be scored or split: refuse it, naming the file."""
    if n == 0:
        raise UserError(f"{spec}: {where} holds no spot; {fix}")


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
                   licence: str = "", citation: str = "", image_only: bool = False) -> SpatialDataset:
    """Align every slide to the shared gene pool and build the dataset (warns once about drops).

    ``image_only``: the parts carry no counts (``base.no_counts``) and no genes; the dataset has
    no gene pool and serves no counts (``SpatialDataset.image_only``)."""
    if not parts:
        raise UserError(f"{spec}: no slide selected; check the folder and the filters in the spec")
    ids = [p.id for p in parts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise UserError(f"{spec}: slide id(s) {', '.join(dup)} appear twice; give each sample a unique id")
    genes, gene_ids = ((), ()) if image_only else _common_genes(parts, spec)
    slides = []
    for p in parts:
        if len(set(p.genes)) != len(p.genes):  # readers make names unique; never let a copy overwrite another
            raise UserError(f"{spec}: slide {p.id} repeats gene names; add duplicate_genes=unique or sum to the spec")
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
    if image_only:
        meta["image_only"] = True
    version = content_version(parts, genes, (name, platform, "image-only") if image_only else (name, platform))
    return SpatialDataset(
        name=name, version=version, slides=tuple(slides), genes=genes,
        gene_ids=gene_ids, organism=organism, platform=platform, licence=licence, citation=citation,
        default_split="patient" if patients_known and len({p.patient for p in parts}) > 1 else "slide",
        meta=meta, image_only=image_only,
    )
