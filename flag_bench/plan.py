"""Planning a grid: validate everything that can be validated, then expand it into CellTasks.

A ``CellTask`` is small and picklable (specs, a frozen config, the method class by reference),
so any executor can ship it to another process or machine; the worker loads the data itself.
Everything a user can get wrong (a method name, a preset, a config value's type, a panel size,
a fold index, a method whose needs the dataset cannot serve) fails here, before any cell runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from flag_bench import PROTOCOL_VERSION
from flag_bench import resolve
from flag_bench.catalog import METHODS
from flag_bench.config import RunConfig, grid_spec
from flag_bench.errors import UserError
from flag_bench.grid import Cell
from flag_bench.spec import DatasetSpec

if TYPE_CHECKING:  # the seam's types, without importing datasets or methods (torch) at run time
    from _typeshed import DataclassInstance

    from flag_bench.datasets.base import PatchSpec, SpatialDataset
    from flag_bench.datasets.fold import FoldSpec
    from flag_bench.methods.base import Method


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to compute one cell (no data, no models)."""

    cell: Cell
    method_cls: type[Method]
    config: DataclassInstance  # the method's frozen Config
    overrides: Mapping[str, Any]
    dataset: DatasetSpec
    fold: FoldSpec
    patch: PatchSpec
    encoder: str
    device: str
    protocol: Mapping[str, Any]
    provenance: Mapping[str, Any]
    artifact_dir: str
    cache_dir: str | None = None
    isolate: bool = False  # fit/predict in a fresh process (flag_bench/isolate.py)
    save_models: bool = False  # keep the fitted method in <artifact_dir>/model (flag_bench/models.py)
    # the gene sets scored as pathways ((name, genes), ...), those that can reach MIN_GENES panel genes
    # on this dataset; () when the run names no --gene-sets (cell.gene_sets holds their identity)
    gene_sets: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def needs_embeddings(self) -> bool:
        return "embeddings" in self.method_cls.card.needs

    @property
    def description(self) -> str:
        c = self.cell
        return f"{c.dataset} G={c.n_genes} {c.method} {c.fold} seed={c.seed}"

    def summary(self) -> dict[str, Any]:
        """What a plan file lists for this cell (a report names planned cells that never finished)."""
        c = self.cell
        return {"cell_id": c.cell_id, "description": self.description, "dataset": c.dataset, "n_genes": c.n_genes,
                "method": c.method, "preset": c.preset, "config_hash": c.config_hash, "fold": c.fold, "seed": c.seed}


@dataclass
class Plan:
    tasks: list[CellTask]
    grid_spec: dict[str, Any]
    datasets: dict[str, SpatialDataset] = field(default_factory=dict)  # DatasetSpec.key -> its dataset


# resolved in flag_bench/resolve.py; the names stay here for the callers and tests that use them
_DATASET_MEMO = resolve._DATASET_MEMO
load_dataset = resolve.dataset


def default_methods() -> tuple[str, ...]:
    from flag_bench.catalog import in_default_run

    return tuple(n for n in METHODS.names() if in_default_run(n))


def resolve_methods(cfg: RunConfig, light: bool = False) -> dict[str, tuple[type[Method], DataclassInstance]]:
    """name -> (class, config) with presets and overrides checked (types included); ``light``:
    torch-free planning stand-ins where a built-in has them (flag_bench/resolve.py)."""
    names = cfg.methods or default_methods()
    for m in (*names, *cfg.method_overrides):
        METHODS.check(m)
    out = {}
    for m in names:
        cls = resolve.method(m, light=light)
        config = cls.make_config(str(cfg.preset), cfg.method_overrides.get(m))
        cls.check_resources(config)
        out[m] = (cls, config)
    return out


def encoder_info(encoder, patch) -> dict[str, Any]:
    """The run encoder's provenance (name, version, weights file and sha256, pretraining, input)
    plus the run's patch, recorded in every cell's protocol card. Resolves and hashes the weights
    file of a foundation-model encoder (a missing or unreadable path fails here, before any
    cell), but never loads a model."""
    prov = getattr(encoder, "provenance", None)
    info = dict(prov()) if callable(prov) else {"name": encoder.name, "version": encoder.version,
                                                 "dim": int(encoder.dim), "weights": None, "pretrained_on": []}
    info["run_patch"] = {"size_um": patch.size_um, "size_px": patch.size_px, "um_per_px": patch.um_per_px}
    expected = info.get("um_per_px")
    # the encoder resamples any tile to its input size; a ratio far from 1 means another magnification
    info["run_um_per_px_over_encoder"] = (patch.um_per_px / expected) if expected else None
    return info


def encoder_identity(encoder) -> str:
    """The encoder coordinate of a cell id: the bare name for the built-ins (existing ids stay),
    name@version for an encoder whose weights a user supplies (other weights, other cells)."""
    ident = getattr(encoder, "identity", None)
    return ident() if callable(ident) else encoder.name


def method_pretraining_corpora(cls) -> tuple[str, ...]:
    """Hook: the corpora a method's own pretrained weights saw. ``MethodCard.pretrained`` holds
    free text (``PretrainedWeights.trained_on``), so until it grows a structured field a card
    declares corpus names in ``extra["pretraining_corpora"]``; this is the one place to change."""
    extra = getattr(cls.card, "extra", None) or {}
    return tuple(str(c) for c in extra.get("pretraining_corpora", ()))


def pretraining_overlap(pretrained_on, corpora) -> list[str]:
    """Sorted corpus names (spelt as the dataset spells them) present in both, case-insensitively."""
    seen = {str(c).casefold() for c in pretrained_on}
    return sorted({str(c) for c in corpora if str(c).casefold() in seen})


def overlap_card(info: Mapping[str, Any], method_cls, dataset_corpora) -> dict[str, Any]:
    """``pretraining_overlap`` (encoder and method together) and who brought each corpus."""
    by_encoder = pretraining_overlap(info.get("pretrained_on", ()), dataset_corpora)
    by_method = pretraining_overlap(method_pretraining_corpora(method_cls), dataset_corpora)
    return {"pretraining_overlap": sorted(set(by_encoder) | set(by_method)),
            "pretraining_overlap_by": {"encoder": by_encoder, "method": by_method},
            "dataset_corpora": sorted({str(c) for c in dataset_corpora})}


def protocol_card(cfg: RunConfig, split, encoder: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "suite": cfg.suite,
        "target_transform": str(cfg.target_transform),
        "split": split.scheme,
        "split_description": split.description,
        "patient_overlap": split.patient_overlap,
        "panel_selector": cfg.panel.kind,
        "panel_fitted_on": "all non-test slides of the fold (train and validation), shared by every method",
        "encoder": cfg.encoder,
        "patch": f"{cfg.patch_um:g} um @ {cfg.patch_um / cfg.patch_px:g} um/px ({cfg.patch_px} px)",
        "pcc_aggregation": "per-gene r over spots of each test slide, mean over genes, then mean over test slides",
        "encoder_info": dict(encoder) if encoder is not None else None,
    }


def _check_patch(ds, spec: DatasetSpec, cfg: RunConfig, methods) -> dict[str, Any]:
    """A patch larger than what the dataset's images hold fails now, not inside the first cell.

    Stored patches (HEST) may be up to ``field_tolerance_um`` (one source pixel) narrower than
    the run's patch: HEST cuts round(112 um / um-per-px) whole source pixels, so about half of
    all slides store 112 um minus a fraction of a pixel. What was allowed goes into the protocol
    card: ``patch_stored_um`` (the narrowest stored field) and ``patch_tolerance_um``."""
    if not any(set(cls.card.needs) & {"embeddings", "tiles", "region"} for cls, _ in methods.values()):
        return {}
    from flag_bench.datasets.readers.images import field_limit

    limit, tol = field_limit([s.tile_reader for s in ds.slides])
    if limit is None:
        return {}
    if cfg.patch_um > limit + tol + 1e-6:
        import math

        allowed = math.floor((limit + tol) * 1000) / 1000 if tol else limit  # printed, never above the limit
        raise UserError(f"--patch-um {cfg.patch_um:g}: dataset {spec.key} holds image patches of at most "
                        f"{limit:g} um around each spot"
                        + (f" (+{tol:.3g} um, one source pixel, tolerated)" if tol else "")
                        + f"; use --patch-um {allowed:g} or less")
    return {"patch_stored_um": limit, "patch_tolerance_um": tol}


def _check_dataset(ds, spec: DatasetSpec, cfg: RunConfig, methods) -> dict[str, Any]:
    """Checks a dataset against the run; returns what the protocol card records about its patches."""
    patch_card = _check_patch(ds, spec, cfg, methods)
    for g in cfg.genes:
        if g > len(ds.genes):
            raise UserError(f"--genes {g}: dataset {ds.name} has only {len(ds.genes)} candidate genes; "
                            f"use --genes {len(ds.genes)} or fewer")
    can = ds.capabilities
    for m, (cls, _) in methods.items():
        missing = sorted(set(cls.card.needs) - set(can))
        if missing:
            raise UserError(f"method '{m}' needs {', '.join(missing)}, which dataset {spec.key} does not provide "
                            f"(it provides {', '.join(sorted(can)) or 'nothing'}); drop the method or the dataset")
    return patch_card


def _gene_sets(cfg: RunConfig):
    """The run's --gene-sets, read and checked (a missing file, a malformed line or an unknown
    name fails here, before any cell), or None."""
    if cfg.gene_sets is None:
        return None
    from flag_bench.gene_sets import resolve_gene_sets

    return resolve_gene_sets(cfg.gene_sets)


def _dataset_gene_sets(gene_sets, ds, spec: DatasetSpec) -> tuple[tuple, dict[str, Any]]:
    """-> (the sets that can be scored on ``ds``, the protocol card's entry); a set file none of whose
    sets reaches MIN_GENES genes of the dataset's gene pool fails now (other symbols, another species)."""
    if gene_sets is None:
        return (), {}
    from flag_bench.gene_sets import PROTOCOL_KEY
    from flag_bench.metrics.pathways import MIN_GENES

    sets = gene_sets.eligible(ds.genes, MIN_GENES)
    if not sets:
        sample = ", ".join(list(ds.genes)[:3])
        raise UserError(f"--gene-sets {gene_sets.spec}: none of its {len(gene_sets.sets)} sets has {MIN_GENES} or "
                        f"more genes among the {len(ds.genes)} candidate genes of dataset {spec.key}; use gene "
                        f"symbols as the dataset names them (e.g. {sample})")
    return sets, {PROTOCOL_KEY: gene_sets.card(MIN_GENES, len(sets))}


def _select_folds(split, cfg: RunConfig, ds) -> tuple:
    folds = split.folds
    if cfg.folds is None:
        return folds
    bad = [i for i in cfg.folds if not 0 <= i < len(folds)]
    if bad:
        raise UserError(f"--folds {bad[0]}: the {split.scheme} split of {ds.name} has folds 0..{len(folds) - 1}")
    return tuple(folds[i] for i in cfg.folds)


def _check_saving(methods: Mapping[str, tuple[type[Method], Any]]) -> None:
    """``--save-models`` with a method that cannot be saved (a plugin without save_state and
    from_state, an oracle) fails here, before any cell is computed."""
    from flag_bench.methods.common.state import saving_refusal

    for name, (cls, _) in methods.items():
        why = saving_refusal(cls, name)
        if why:
            raise UserError(f"--save-models: {why}")


def isolation_provenance(provenance: Mapping[str, Any], method_cls, isolate: bool) -> Mapping[str, Any]:
    """The run's provenance plus, under ``--isolate``, how this cell's fit/predict ran: in a fresh
    process (flag_bench/isolate.py), or here for a built-in the registry grants the test truth
    (an oracle or truth-reading null: harness code, handed the truth by the harness)."""
    if not isolate:
        return provenance
    from flag_bench.methods.oracles import receives_truth

    if receives_truth(method_cls):
        how = {"isolated": False, "why": "a built-in truth reference (oracle or null): computed by the harness"}
    else:
        how = {"isolated": True, "how": "fit and predict in a fresh spawned process that received the train, "
                                        "validation and test inputs only; scored in the parent"}
    return {**provenance, "isolation": how}


def plan_grid(cfg: RunConfig, *, device: str, provenance: Mapping[str, Any], results_dir: str,
              cache_dir: str | None = None, light: bool = False) -> Plan:
    """Validate and expand: datasets x G x methods x folds x seeds, one split per dataset. ``light``
    (a dry run): tasks carry torch-free method stand-ins, so nothing imports torch; the cells,
    configs and errors are the same."""
    from pathlib import Path

    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.fold import FoldSpec
    from flag_bench.datasets.splits import carve_validation, make_split

    encoder = resolve.encoder(cfg.encoder)
    methods = resolve_methods(cfg, light)
    if cfg.save_models:
        _check_saving(methods)
    selector = resolve.panel_selector(cfg.panel)  # a bad spec or panel file fails now
    panel_params = tuple(sorted(selector.params.items()))
    patch = PatchSpec(cfg.patch_um, cfg.patch_px)
    enc_info = encoder_info(encoder, patch)  # a missing weights path fails here
    enc_id = encoder_identity(encoder)
    gene_sets = _gene_sets(cfg)
    tasks: list[CellTask] = []
    loaded = {}
    for spec in cfg.datasets:
        ds = loaded[spec.key] = load_dataset(spec)
        patch_card = _check_dataset(ds, spec, cfg, methods)
        split = make_split(ds, cfg.split, allow_patient_overlap=cfg.allow_patient_overlap)
        ds_sets, sets_card = _dataset_gene_sets(gene_sets, ds, spec)
        protocol = {**protocol_card(cfg, split, enc_info), **patch_card, **sets_card}
        corpora = tuple(ds.meta.get("corpora", ()) or ())
        for g in cfg.genes:
            for m, (cls, mcfg) in methods.items():
                mprotocol = {**protocol, **overlap_card(enc_info, cls, corpora)}
                for base_fold in _select_folds(split, cfg, ds):
                    fold = carve_validation(split, base_fold) if cls.card.uses_validation else base_fold
                    fspec = FoldSpec(cfg.panel, int(g), fold, cfg.target_transform)
                    for seed in cfg.seeds:
                        cell = Cell(
                            dataset=ds.name, dataset_spec=spec.key, dataset_version=ds.version, n_genes=int(g),
                            panel=cfg.panel.text, panel_params=panel_params, method=m, preset=str(cfg.preset),
                            config_hash=cls.config_hash(mcfg), split=split.scheme, fold=base_fold.name,
                            fold_train=fold.train, fold_val=fold.val, fold_test=fold.test, seed=int(seed),
                            target_transform=str(cfg.target_transform), encoder=enc_id, patch=patch.key(),
                            gene_sets=gene_sets.identity if gene_sets is not None else "",
                        )
                        tasks.append(CellTask(
                            cell=cell, method_cls=cls, config=mcfg, overrides=dict(cfg.method_overrides.get(m, {})),
                            dataset=spec, fold=fspec, patch=patch, encoder=cfg.encoder, device=device,
                            protocol=mprotocol, provenance=isolation_provenance(provenance, cls, cfg.isolate),
                            artifact_dir=str(Path(results_dir) / "artifacts" / cell.cell_id), cache_dir=cache_dir,
                            isolate=cfg.isolate, gene_sets=ds_sets, save_models=cfg.save_models,
                        ))
    return Plan(tasks, grid_spec(cfg), loaded)
