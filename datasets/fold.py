"""Fold building: a typed ``FoldSpec`` in; train / val / test views, the truths and the panel out.

The panel, like every statistic the protocol fits, belongs to the fold: it is fitted once on all
of the fold's non-test slides (train and val together) and is the same for every method, so a
method that carves a validation slide from its training slides is scored on the same genes as
the others. A builder serves one dataset and memoises panels and per-slide panel expression, so
a worker that runs many cells of a fold pays for them once.

Embeddings are computed before cells run (``prepare_embeddings``, in the driver), so workers
only read the cache and two workers never encode the same slide at once.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flag_bench.datasets.base import PatchSpec, Slide, SpatialDataset
from flag_bench.datasets.embed_cache import SlideRef, get_embeddings, is_cached
from flag_bench.datasets.encoders import Encoder
from flag_bench.datasets.image import EncoderSource, SlideImage
from flag_bench.datasets.memo import ByteMemo
from flag_bench.datasets.panels import GenePanel, PanelSelector, selector_key
from flag_bench.datasets.splits import Fold
from flag_bench.datasets.views import SlideInput, TestData, TrainData, TrainSlide
from flag_bench.errors import UserError
from flag_bench.spec import PanelSpec, TargetTransform

# (float64 counts (N, G), float64 library (N,)) -> float64 targets; library = the spot's total
# over the whole candidate pool, so CPM does not depend on which genes the panel kept
TARGET_TRANSFORMS: Mapping[TargetTransform, Callable[[np.ndarray, np.ndarray], np.ndarray]] = MappingProxyType({
    TargetTransform.LOG1P: lambda c, library: np.log1p(c),
    TargetTransform.LOG2P1: lambda c, library: np.log2(1.0 + c),  # FLAG's and Stem's log2(1 + count)
    TargetTransform.LOG1P_CPM: lambda c, library: np.log1p(c / np.maximum(library, 1.0)[:, None] * 1e6),
})
# what a value in target space is, in words (a prediction file says which it holds)
TARGET_MEANINGS: Mapping[TargetTransform, str] = MappingProxyType({
    TargetTransform.LOG1P: "natural log of (1 + UMI count)",
    TargetTransform.LOG2P1: "log2 of (1 + UMI count)",
    TargetTransform.LOG1P_CPM: "natural log of (1 + counts per million of the spot's total over the gene pool)",
})


def transform_counts(counts: np.ndarray, library: np.ndarray, how: TargetTransform | str) -> np.ndarray:
    """Raw counts (N, G) -> float32 targets, computed in float64. ``library`` is (N,)."""
    table = TARGET_TRANSFORMS[TargetTransform(how)]
    return table(counts.astype(np.float64), np.asarray(library, dtype=np.float64)).astype(np.float32)


@dataclass(frozen=True)
class FoldSpec:
    """What a cell's data depends on, beyond the dataset and the protocol patch. Picklable."""

    panel: PanelSpec
    n_genes: int
    fold: Fold
    target_transform: TargetTransform


@dataclass(frozen=True, eq=False)
class FoldViews:
    """A cell's data. ``truths`` and ``annotations`` follow ``test.slides``; they are for scoring
    and never reach a method."""

    train: TrainData
    val: TrainData | None
    test: TestData
    truths: tuple[np.ndarray, ...]  # (n_spots, G) float32 targets, read-only
    annotations: tuple[np.ndarray | None, ...]  # the test slides' meta['annotations']
    panel: GenePanel
    # the test slides' raw panel counts (n_spots, G) and spot totals (n_spots,): the noise ceilings
    truth_counts: tuple[np.ndarray, ...] = ()
    truth_libraries: tuple[np.ndarray, ...] = ()


def _test_informed(selector: PanelSelector, ds: SpatialDataset) -> bool:
    """A gene-list file the dataset declares chosen with its test samples
    (``meta['test_informed_files']``, e.g. HEST-Benchmark's var_50genes.json): the panel is a
    fixed list, fitted on no fold, and the leaderboard marks it."""
    path = selector.params.get("path")
    if not path:
        return False
    declared = ds.meta.get("test_informed_files") or ()
    return str(Path(path).resolve()) in {str(Path(f).resolve()) for f in declared}


class FoldBuilder:
    """Builds the views of one dataset's folds; memoises panels and per-slide expression."""

    def __init__(
        self,
        ds: SpatialDataset,
        *,
        patch: PatchSpec,
        encoder: Encoder | None,
        device: str,
        cache_dir: str | None,
        encoder_resolver: Callable[[str], Encoder] | None = None,
    ):
        self.ds = ds
        self.patch = patch
        self.encoder = encoder
        self.device = device
        self.cache_dir = cache_dir
        self._encoders = EncoderSource(encoder, encoder_resolver)
        self._panels: dict[tuple, GenePanel] = {}  # small: gene indices and statistics
        # (panel, slide, transform) -> (counts, targets) and slide -> library: bounded in bytes
        # with the process's other memos (datasets/memo.py); a forgotten entry is recomputed
        self._expression = ByteMemo("fold expression")
        self._library = ByteMemo("spot libraries")
        self._image_readers: dict[str, object] = {}  # slide -> the reader methods are handed

    def panel(self, spec: FoldSpec, selector: PanelSelector) -> GenePanel:
        """The fold's panel: fitted on every non-test slide, in dataset order, once."""
        if selector.name != spec.panel.kind:
            raise ValueError(f"selector '{selector.name}' does not implement panel spec '{spec.panel}'")
        if self.ds.image_only:
            raise UserError(f"dataset {self.ds.name} was loaded image-only (no counts): it serves prediction "
                            "(flag-bench predict), not a fold to train or score on; load it with its counts")
        wanted = set(spec.fold.non_test)
        non_test = tuple(s for s in self.ds.slide_ids if s in wanted)
        if len(non_test) != len(wanted):
            unknown = sorted(wanted - set(non_test))
            raise UserError(f"fold '{spec.fold.name}': slide(s) {', '.join(unknown)} not in dataset {self.ds.name}")
        key = (selector_key(selector), int(spec.n_genes), tuple(sorted(non_test)))
        if key not in self._panels:
            panel = selector.fit(
                [self.ds.slide(s).counts for s in non_test], self.ds.genes, int(spec.n_genes),
                train_slides=non_test, dataset_version=self.ds.version,
            )
            if _test_informed(selector, self.ds):
                panel = dataclasses.replace(panel, stats={**panel.stats, "test_informed": True})
            self._panels[key] = panel
        return self._panels[key]

    def build(self, spec: FoldSpec, selector: PanelSelector, *, embeddings: bool) -> FoldViews:
        """Views of ``spec.fold`` on the fold's panel; ``embeddings`` fills SlideInput.embeddings
        with the run encoder's (cached) embeddings of the protocol patches."""
        panel = self.panel(spec, selector)
        how = TargetTransform(spec.target_transform)
        common: dict[str, Any] = dict(genes=panel.genes, gene_ids=tuple(self.ds.gene_ids[i] for i in panel.index),
                                      target_transform=how.value, dataset=self.ds.name)

        def train_data(ids: Sequence[str]) -> TrainData:
            slides = []
            for sid in ids:
                counts, targets = self._slide_expression(panel, sid, how)
                slides.append(TrainSlide(**self._inputs(sid, embeddings), targets=targets, counts=counts))
            return TrainData(**common, slides=tuple(slides))

        fold = spec.fold
        test = self.test_data(fold.test, genes=panel.genes, gene_ids=common["gene_ids"], target_transform=how,
                              embeddings=embeddings)
        return FoldViews(
            train=train_data(fold.train),
            val=train_data(fold.val) if fold.val else None,
            test=test,
            truths=tuple(self._slide_expression(panel, s, how)[1] for s in fold.test),
            annotations=tuple(self.ds.slide(s).meta.get("annotations") for s in fold.test),
            panel=panel,
            truth_counts=tuple(self._slide_expression(panel, s, how)[0] for s in fold.test),
            truth_libraries=tuple(self._library_of(self.ds.slide(s)) for s in fold.test),
        )

    def test_data(self, slide_ids: Sequence[str], *, genes: Sequence[str], gene_ids: Sequence[str] | None,
                  target_transform: TargetTransform | str, embeddings: bool) -> TestData:
        """The TestData of ``slide_ids`` for a method predicting ``genes`` (in that column order):
        what a cell's test fold hands ``predict``, and all ``flag-bench predict`` hands a saved
        model (no counts needed: image-only datasets too). ``gene_ids`` None -> "" each."""
        genes = tuple(str(g) for g in genes)
        ids = ("",) * len(genes) if gene_ids is None else tuple(str(g) for g in gene_ids)
        if len(ids) != len(genes):
            raise ValueError(f"{len(ids)} gene ids for {len(genes)} genes")
        return TestData(genes=genes, gene_ids=ids, target_transform=TargetTransform(target_transform).value,
                        dataset=self.ds.name,
                        slides=tuple(SlideInput(**self._inputs(s, embeddings)) for s in slide_ids))

    def _slide_expression(self, panel: GenePanel, sid: str, how: TargetTransform) -> tuple[np.ndarray, np.ndarray]:
        """Read-only (int32 panel counts, float32 targets) of one slide, memoised."""
        def compute() -> tuple[np.ndarray, np.ndarray]:
            s = self.ds.slide(sid)
            counts = s.counts[:, np.asarray(panel.index)].toarray().astype(np.int32)
            targets = transform_counts(counts, self._library_of(s), how)
            counts.setflags(write=False)
            targets.setflags(write=False)
            return counts, targets

        return self._expression.get_or_compute((panel.index, sid, how), compute)

    def _library_of(self, s: Slide) -> np.ndarray:
        return self._library.get_or_compute(s.id, lambda: np.asarray(s.counts.sum(axis=1)).ravel())

    def _inputs(self, sid: str, embeddings: bool) -> dict:
        """SlideInput fields. Only copies and image access leave here: never the Slide itself,
        nor a closure over it or over this builder (which holds every slide's counts)."""
        s = self.ds.slide(sid)
        return dict(
            slide_id=sid, patient=s.patient, barcodes=np.asarray(s.barcodes),
            coords_um=np.asarray(s.coords_um, dtype=np.float32),
            embeddings=self._embeddings(sid) if embeddings else None,
            image=self._image(s), spot_diameter_um=float(s.spot_diameter_um),
        )

    def _image(self, s: Slide) -> SlideImage | None:
        if s.tile_reader is None:
            return None
        return SlideImage(ref=SlideRef.of(self.ds, s.id), reader=self._image_reader(s),
                          coords_um=s.coords_um, patch=self.patch, encoders=self._encoders,
                          device=self.device, cache_dir=self.cache_dir)

    def _image_reader(self, s: Slide):
        """The slide's reader as methods get it: ``image_only(slide_id)`` where the reader's file
        also holds expression (no path to that file reaches a method), else the reader itself."""
        restrict = getattr(s.tile_reader, "image_only", None)
        if restrict is None:
            return s.tile_reader
        if s.id not in self._image_readers:
            self._image_readers[s.id] = restrict(s.id)
        return self._image_readers[s.id]

    def _embeddings(self, sid: str) -> np.ndarray:
        if self.encoder is None:
            raise UserError(f"dataset {self.ds.name}: a method needs embeddings but the run has no encoder")
        if self.ds.slide(sid).tile_reader is None:
            raise UserError(f"dataset {self.ds.name} has no images (slide {sid}); it cannot serve embeddings")
        return get_embeddings(self.ds, sid, self.encoder, self.patch, device=self.device, cache_dir=self.cache_dir)


def prepare_embeddings(
    ds: SpatialDataset,
    slide_ids: Sequence[str],
    encoder: Encoder,
    patch: PatchSpec,
    *,
    device: str,
    cache_dir: str | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> float:
    """Encode every listed slide the disk cache lacks, once; return the seconds spent encoding.

    ``on_progress(done, total)`` counts spots to encode, from (0, total), after every batch.
    """
    todo = [sid for sid in dict.fromkeys(slide_ids)
            if not is_cached(SlideRef.of(ds, sid), encoder, patch, device=device, cache_dir=cache_dir)]
    total = sum(ds.slide(sid).n_spots for sid in todo)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if on_progress is not None:
            on_progress(done[0], total)

    if on_progress is not None:
        on_progress(0, total)
    spent = 0.0
    for sid in todo:
        t0 = time.perf_counter()
        get_embeddings(ds, sid, encoder, patch, device=device, cache_dir=cache_dir, on_batch=advance)
        spent += time.perf_counter() - t0
    return spent
