"""Test views without counts: what a saved model's ``predict`` receives on new slides.

``prediction_views`` builds, for every slide of a dataset (image-only or not: counts are never read),
the ``TestData`` a method gets in a cell's test fold, through the same ``FoldBuilder`` inputs:
spot barcodes and coordinates, image access (``SlideImage``: tiles, regions, embeddings by
other encoders) and the run encoder's cached embeddings. The gene panel, patch, encoder and
target transform are the saved model's, so the method sees what it saw when it was scored.
"""

from __future__ import annotations

from typing import Callable, Sequence

from flag_bench.datasets.base import PatchSpec, SpatialDataset
from flag_bench.datasets.encoders import Encoder
from flag_bench.datasets.fold import FoldBuilder
from flag_bench.datasets.views import TestData
from flag_bench.errors import UserError
from flag_bench.spec import TargetTransform

# what a method needs at prediction time is its card's needs less "counts": training counts
# (FLAG's gene tokens) are the fitted model's, and no method reads a test slide's counts
TRAINING_ONLY_NEEDS = frozenset({"counts"})


def predict_needs(needs: frozenset[str] | Sequence[str]) -> frozenset[str]:
    """The needs a dataset must serve for a fitted method to predict on it."""
    return frozenset(needs) - TRAINING_ONLY_NEEDS


def missing_needs(ds: SpatialDataset, needs: frozenset[str] | Sequence[str]) -> tuple[str, ...]:
    """The prediction needs (``predict_needs``) that ``ds`` cannot serve, sorted."""
    return tuple(sorted(predict_needs(needs) - ds.capabilities))


def prediction_views(ds: SpatialDataset, *, genes: Sequence[str], target_transform: TargetTransform | str,
               patch: PatchSpec, encoder: Encoder | None, embeddings: bool, device: str,
               cache_dir: str | None, encoder_resolver: Callable[[str], Encoder] | None = None,
               gene_ids: Sequence[str] | None = None, slide_ids: Sequence[str] | None = None) -> TestData:
    """TestData of every slide of ``ds`` (or ``slide_ids``, in that order) for a model that
    predicts ``genes`` (its output columns, in order) in ``target_transform`` space.

    ``embeddings``: fill ``SlideInput.embeddings`` with ``encoder``'s embeddings of ``patch``
    tiles (through the embedding cache, computed on a miss), as a cell does for a method whose
    card needs them. Nothing here reads counts, so ``ds`` may be image-only.
    """
    if not genes:
        raise UserError("the model predicts no gene; give a model saved from a finished cell")
    if embeddings and encoder is None:
        raise UserError(f"dataset {ds.name}: the model needs embeddings but no encoder was given")
    wanted = ds.slide_ids if slide_ids is None else tuple(slide_ids)
    unknown = [s for s in wanted if s not in ds.slide_ids]
    if unknown:
        raise UserError(f"dataset {ds.name} has no slide {', '.join(unknown)}; choose from {', '.join(ds.slide_ids)}")
    builder = FoldBuilder(ds, patch=patch, encoder=encoder, device=device, cache_dir=cache_dir,
                          encoder_resolver=encoder_resolver)
    return builder.test_data(wanted, genes=genes, gene_ids=gene_ids, target_transform=target_transform,
                             embeddings=embeddings)
