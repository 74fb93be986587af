"""flag_bench/resolve.py: one resolver for datasets, encoders, panel selectors, methods and
devices; the torch-free planning stand-ins are the methods' own configs; PRESETS is defined once."""

from __future__ import annotations

import dataclasses

import pytest

from flag_bench import resolve
from flag_bench.catalog import CONFIG_HOMES, ENCODERS, METHODS
from flag_bench.errors import UserError
from flag_bench.spec import PRESETS, DatasetSpec, PanelSpec, Preset


def test_presets_are_defined_once_by_the_preset_enum():
    from flag_bench import check
    from flag_bench.cli import catalog as cli_catalog
    from flag_bench.methods import base

    assert PRESETS == tuple(p.value for p in Preset)
    assert base.PRESETS is PRESETS and check.PRESETS is PRESETS and cli_catalog.PRESET_ORDER is PRESETS
    assert tuple(base.Method.presets) == PRESETS


def _outcome(fn, *args):
    """What a call did: ("ok", value) or ("error", its type and message)."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the comparison is the point: same error, same text
        return ("error", type(exc).__name__, str(exc))


@pytest.mark.parametrize("name", sorted(CONFIG_HOMES))
def test_a_planning_stand_in_is_the_methods_own_config(name):
    stand, real = resolve.method(name, light=True), METHODS.get(name)
    assert stand is not real and resolve.method(name) is real
    assert stand.card is real.card and stand.Config is real.Config and stand.presets is real.presets
    for preset in real.presets:
        assert _outcome(stand.make_config, preset) == _outcome(real.make_config, preset)
        config = real.make_config(preset)
        assert stand.config_hash(config) == real.config_hash(config)
        assert _outcome(stand.check_resources, config) == _outcome(real.check_resources, config)
    with pytest.raises(TypeError):  # fit/predict stay abstract: never fitted by mistake
        stand(stand.make_config(PRESETS[0]), seed=0)


def test_light_resolution_of_a_method_without_a_config_home_is_the_class():
    assert "mean" not in CONFIG_HOMES
    assert resolve.method("mean", light=True) is METHODS.get("mean")
    with pytest.raises(UserError, match="unknown method"):
        resolve.method("no-such-method", light=True)


def test_every_default_method_plans_without_its_torch_module():
    """A default-run built-in whose module imports torch needs a config home, or the default dry
    run imports torch (tests/test_cli_light.py runs it)."""
    from flag_bench.plan import default_methods

    torch_free = {"flag_bench.methods.controls", "flag_bench.methods.nulls", "flag_bench.methods.oracles"}
    for name in default_methods():
        module = METHODS._builtin[name].partition(":")[0]
        assert name in CONFIG_HOMES or module in torch_free, name


def test_a_light_plan_has_the_cells_and_configs_of_the_full_plan(tmp_path):
    from flag_bench.config import RunConfig
    from flag_bench.plan import plan_grid

    cfg = RunConfig(datasets=(DatasetSpec.parse("synthetic:n_slides=3,spots_per_slide=30,n_genes=30,seed=2"),),
                    methods=("flag", "stem", "mean"), genes=(5,), encoder="color-stats", device="cpu",
                    results_dir=str(tmp_path / "r"))
    full = plan_grid(cfg, device="cpu", provenance={}, results_dir=cfg.results_dir)
    light = plan_grid(cfg, device="cpu", provenance={}, results_dir=cfg.results_dir, light=True)
    assert [t.cell for t in light.tasks] == [t.cell for t in full.tasks]
    assert [dataclasses.asdict(t.config) for t in light.tasks] == [dataclasses.asdict(t.config) for t in full.tasks]
    assert [t.method_cls.card for t in light.tasks] == [t.method_cls.card for t in full.tasks]


def test_datasets_are_loaded_once_and_shared_with_the_planner():
    from flag_bench import plan

    spec = "synthetic:n_slides=2,spots_per_slide=10,n_genes=12,seed=5"
    ds = resolve.dataset(spec)
    assert resolve.dataset(DatasetSpec.parse(spec)) is ds
    assert plan.load_dataset is resolve.dataset and plan._DATASET_MEMO is resolve._DATASET_MEMO
    with pytest.raises(UserError, match="unknown dataset"):
        resolve.dataset("no-such-dataset")


def test_encoders_and_panel_selectors_resolve_through_the_registries():
    from flag_bench.catalog import RegisteredEncoders
    from flag_bench.datasets.panels import HVG

    one, two = resolve.encoder("color-stats"), resolve.encoder("color-stats")
    assert type(one) is ENCODERS.get("color-stats") and one is not two
    assert isinstance(resolve.encoder_resolver(), RegisteredEncoders)
    assert set(resolve.encoder_names()) == set(ENCODERS.names())
    with pytest.raises(UserError, match="unknown encoder"):
        resolve.encoder("no-such-encoder")
    assert isinstance(resolve.panel_selector("hvg"), HVG)
    assert isinstance(resolve.panel_selector(PanelSpec.parse("hvg")), HVG)


def test_device_resolution_agrees_with_the_torch_check():
    from flag_bench.methods.base import resolve_device

    assert resolve.device("cpu") == "cpu"
    assert resolve.device("auto") == resolve_device("auto")
    with pytest.raises(UserError, match="unknown device"):
        resolve.device("tpu")
