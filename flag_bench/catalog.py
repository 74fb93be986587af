"""The registries and their built-in entries (as lazy "module:attr" strings)."""

from __future__ import annotations

from flag_bench.registry import Registry

METHODS: Registry = Registry(
    "methods",
    {
        "mean": "flag_bench.methods.controls:MeanControl",
        "ridge": "flag_bench.methods.controls:RidgeControl",
        "knn": "flag_bench.methods.controls:KNNControl",
        # image-free nulls (methods/roles.py): ordinary methods, shown beside the controls, never ranked
        "random-spot": "flag_bench.methods.nulls:RandomSpot",
        "gene-prior": "flag_bench.methods.nulls:GenePrior",
        "flag": "flag_bench.methods.flag.method:Flag",
        "flag-paper": "flag_bench.methods.flag.variants:FlagPaper",
        "flag-joint": "flag_bench.methods.flag.variants:FlagJoint",
        "flag-node": "flag_bench.methods.flag.variants:FlagNodeOnly",
        "flag-no-gfm": "flag_bench.methods.flag.variants:FlagNoGFM",
        "flag-no-graph": "flag_bench.methods.flag.variants:FlagNoGraph",
        "flag-regression": "flag_bench.methods.flag.variants:FlagRegression",
        "stem": "flag_bench.methods.stem:Stem",
        "bleep": "flag_bench.methods.bleep.method:Bleep",
        "histogene": "flag_bench.methods.histogene.method:HisToGene",
        "ridge-smooth": "flag_bench.methods.controls:RidgeSmoothControl",
        "triplex": "flag_bench.methods.triplex.method:Triplex",
        "stflow": "flag_bench.methods.stflow.method:STFlow",
        # oracles: computed from the test truth by the harness, marked on every leaderboard
        "oracle-noise": "flag_bench.methods.oracles:OracleNoise",
        "oracle-smooth": "flag_bench.methods.oracles:OracleSmooth",
        "oracle-slide-mean": "flag_bench.methods.oracles:OracleSlideMean",
        # nulls computed from the test truth by the harness (shuffled, rotated): shown, never ranked
        "null-shuffle": "flag_bench.methods.oracles:NullShuffle",
        "null-rotate": "flag_bench.methods.oracles:NullRotate",
    },
)

# Torch-free homes of the cards of built-ins whose module imports torch: `flag-bench list` reads
# the card from here instead of importing the implementation (which takes its card from the same
# object, so the text lives once). A torch-backed built-in without an entry here makes `list`
# import torch (tests/test_cli_catalog.py fails); controls import no torch and need none.
METHODS.set_light({
    "flag": "flag_bench.methods.flag.cards:FLAG",
    "flag-paper": "flag_bench.methods.flag.cards:FLAG_PAPER",
    "flag-joint": "flag_bench.methods.flag.cards:FLAG_JOINT",
    "flag-node": "flag_bench.methods.flag.cards:FLAG_NODE",
    "flag-no-gfm": "flag_bench.methods.flag.cards:FLAG_NO_GFM",
    "flag-no-graph": "flag_bench.methods.flag.cards:FLAG_NO_GRAPH",
    "flag-regression": "flag_bench.methods.flag.cards:FLAG_REGRESSION",
    "stem": "flag_bench.methods.stem_card:STEM",
    "bleep": "flag_bench.methods.bleep.card:BLEEP",
    "histogene": "flag_bench.methods.histogene.card:HISTOGENE",
    "triplex": "flag_bench.methods.triplex.card:TRIPLEX",
    "stflow": "flag_bench.methods.stflow.card:STFLOW",
})

# Torch-free homes of the Config, presets and resource check of the built-ins whose module imports
# torch ("module:attr", attr a dict of methods/config_home.ConfigHome by method name): planning
# (`run --dry-run`, `show`) reads them through flag_bench/resolve.py instead of importing torch.
# The method class takes the same objects, so they live once (tests/test_resolve.py checks both).
CONFIG_HOMES: dict[str, str] = {
    **{name: "flag_bench.methods.flag.config:HOMES" for name in (
        "flag", "flag-paper", "flag-joint", "flag-node", "flag-no-gfm", "flag-no-graph", "flag-regression")},
    "stem": "flag_bench.methods.stem_config:HOMES",
    "bleep": "flag_bench.methods.bleep.config:HOMES",
    "histogene": "flag_bench.methods.histogene.config:HOMES",
    "triplex": "flag_bench.methods.triplex.config:HOMES",
    "stflow": "flag_bench.methods.stflow.config:HOMES",
}


# The built-in names the harness hands the test truth (methods/oracles.py): the oracles and the
# nulls built from the truth. The grant is this mapping (a registered built-in name -> the class
# the registry resolves it to), never something a class says about itself (its __module__, card
# or base class): a plugin's subclass that claims the oracles' module is an ordinary method.
TRUTH_RECEIVERS = ("oracle-noise", "oracle-smooth", "oracle-slide-mean", "null-shuffle", "null-rotate")


def granted_truth(cls) -> bool:
    """Whether the harness hands ``cls`` the test truths: it is the class a built-in name of
    ``TRUTH_RECEIVERS`` resolves to."""
    if not isinstance(cls, type):
        return False
    return any(METHODS.origin(n) == "built-in" and METHODS.get(n) is cls for n in TRUTH_RECEIVERS)


class RegisteredEncoders:
    """The encoder resolver of the image access handed to methods (``SlideImage.embeddings``):
    an encoder name through the ENCODERS registry. It holds no state, and, unlike a closure or
    a function, carries no module globals a method could follow to the harness's memos of
    loaded datasets (docs/threat-model.md)."""

    __slots__ = ()

    def __call__(self, name: str):
        return ENCODERS.get(ENCODERS.check(name))()

    def __repr__(self) -> str:
        return "RegisteredEncoders()"


def method_card(name: str):
    """The card of method ``name`` without importing torch for built-ins (plugins are imported)."""
    return METHODS.describe(name, "card")


def in_default_run(name: str) -> bool:
    """Built-ins marked ``default_run`` make the default grid; plugins run only when named."""
    return METHODS.origin(name) == "built-in" and method_card(name).default_run


DATASETS: Registry = Registry(
    "datasets",
    {
        "her2st-mini": "flag_bench.datasets.her2st_mini:load",
        "synthetic": "flag_bench.datasets.synthetic:load",
        "hest": "flag_bench.datasets.readers.hest:load",
        "hest-bench": "flag_bench.datasets.readers.hest_bench:load",
        "spaceranger": "flag_bench.datasets.readers.spaceranger:load",
        "st": "flag_bench.datasets.readers.legacy_st:load",
        "h5ad": "flag_bench.datasets.readers.h5ad:load",
    },
)

ENCODERS: Registry = Registry(
    "encoders",
    {
        "efficientnet-lite0": "flag_bench.datasets.encoders:EfficientNetLite0",
        "color-stats": "flag_bench.datasets.encoders:ColorStats",
        # pathology foundation models, weights from FLAG_BENCH_<NAME>_WEIGHTS or the local HF cache
        # (CONCH is not here: its CoCa image tower needs open_clip; see datasets/fm_encoders.py)
        "uni": "flag_bench.datasets.fm_encoders:Uni",
        "uni2-h": "flag_bench.datasets.fm_encoders:Uni2H",
        "h-optimus-0": "flag_bench.datasets.fm_encoders:HOptimus0",
        "virchow2": "flag_bench.datasets.fm_encoders:Virchow2",
        "phikon": "flag_bench.datasets.fm_encoders:Phikon",
        "gigapath": "flag_bench.datasets.fm_encoders:Gigapath",
    },
)

PANELS: Registry = Registry(
    "panels",
    {
        "hmhvg": "flag_bench.datasets.panels:HMHVG",
        "hvg": "flag_bench.datasets.panels:HVG",
        "file": "flag_bench.datasets.panels:FilePanel",
    },
)

METRICS: Registry = Registry(
    "metrics",
    {
        "pcc": "flag_bench.metrics.core:PCC",
        "error": "flag_bench.metrics.core:ERROR",
        "pcc_pooled": "flag_bench.metrics.core:PCC_POOLED",
        "gsc": "flag_bench.metrics.structure:GSC",
        "ssc": "flag_bench.metrics.structure:SSC",
        "rvd": "flag_bench.metrics.structure:RVD",
        "gsc_cpm": "flag_bench.metrics.structure:GSC_CPM",
        "ssc_spot": "flag_bench.metrics.location:SSC_SPOT",
        "lee_l": "flag_bench.metrics.location:LEE_L",
        "domains": "flag_bench.metrics.domains:DOMAINS",
    },
)

# gene-set files for pathway scores (--gene-sets NAME): each entry a package resource pinned by its
# sha256 (flag_bench.gene_sets.GeneSetEntry), checked whenever it is loaded
GENE_SETS: Registry = Registry(
    "gene_sets",
    {
        "her2-breast": "flag_bench.gene_sets:HER2_BREAST",
    },
)

ALL = {"methods": METHODS, "datasets": DATASETS, "metrics": METRICS, "encoders": ENCODERS, "panels": PANELS,
       "gene_sets": GENE_SETS}
