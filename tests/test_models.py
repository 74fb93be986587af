"""Saved models (flag_bench/models.py, methods/common/state.py): every built-in method saved by
a real cell and loaded back predicts what the cell scored, bit for bit; a plugin without the
hooks is refused at plan time and one with them works; a changed file or a crafted skeleton is
refused; ``flag-bench run --save-models`` keeps the models without changing a score."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flag_bench.catalog import METHODS, TRUTH_RECEIVERS, method_card
from flag_bench.cell import _selector, fold_builder, run_cell
from flag_bench.cli import app
from flag_bench.config import RunConfig
from flag_bench.errors import UserError
from flag_bench.measure import provenance
from flag_bench.methods.base import Method, MethodCard
from flag_bench.methods.common.state import MethodState, Refused, restricted_loads
from flag_bench.methods.controls import MeanConfig, MeanControl
from flag_bench.models import MODEL_DIR, SKELETON, WEIGHTS, find_model, load_model, read_model_json
from flag_bench.plan import plan_grid
from flag_bench.scoring import check_predictions, check_samples
from flag_bench.spec import SplitSpec
from flag_bench.store import ResultsStore

# the contract check's dataset (flag_bench/check.py DATASET_PARAMS): 5 slides of 40 spots, 3 patients
SYN = "synthetic:n_slides=5,n_patients=3,spots_per_slide=40,n_genes=60,seed=3"
BUILT_INS = [n for n in METHODS.names() if METHODS.origin(n) == "built-in" and n not in TRUTH_RECEIVERS]


def run_config(tmp_path: Path, methods, **kw) -> RunConfig:
    base = dict(datasets=(SYN,), methods=tuple(methods), genes=(10,), encoder="color-stats", preset="tiny",
                device="cpu", folds=(0,), patch_px=32, split=SplitSpec("patient"), results_dir=str(tmp_path / "res"),
                save_models=True)
    base.update(kw)
    return RunConfig(**base)


def tasks(cfg: RunConfig):
    return plan_grid(cfg, device="cpu", provenance=provenance("cpu"), results_dir=cfg.results_dir).tasks


def predictions(method, test) -> list[np.ndarray]:
    """What a cell scores for ``method`` on ``test``: the mean of its draws, or its predictions."""
    samples = method.predict_samples(test)
    if samples is not None:
        return [s.mean(axis=0) for s in check_samples("loaded", samples, test)]
    return check_predictions("loaded", method.predict(test), test)


def cell_and_model(task):
    """(record, the loaded method and its ModelInfo, the test view and the stored predictions)."""
    import anndata as ad

    rec = run_cell(task)
    assert rec.ok, rec.error
    folder = Path(task.artifact_dir) / MODEL_DIR
    method, info = load_model(folder, device="cpu")
    views = fold_builder(task).build(task.fold, _selector(task), embeddings=task.needs_embeddings)
    stored = ad.read_h5ad(Path(task.artifact_dir) / "predictions.h5ad").X
    return rec, method, info, views.test, np.asarray(stored)


@pytest.mark.parametrize("name", BUILT_INS)
def test_a_saved_built_in_predicts_what_its_cell_scored(tmp_path, name):
    (task,) = tasks(run_config(tmp_path, [name]))
    rec, method, info, test, stored = cell_and_model(task)
    assert "model" in rec.artifacts
    again = np.concatenate(predictions(method, test))
    assert again.dtype == stored.dtype and np.array_equal(again, stored), \
        f"{name}: max |difference| {np.abs(again - stored).max()}"
    assert type(method) is METHODS.get(name) and method.device == "cpu" and method.seed == rec.cell.seed
    assert info.method == name and info.cell_id == rec.cell_id and info.genes == rec.panel.genes
    assert info.gene_ids == test.gene_ids
    assert (info.target_transform, info.encoder) == (rec.cell.target_transform, "color-stats")
    assert (info.patch_um, info.patch_px) == (task.patch.size_um, task.patch.size_px)
    assert info.needs == method_card(name).needs
    assert info.trained_on["dataset_version"] == rec.cell.dataset_version
    assert info.trained_on["train_slides"] == list(rec.cell.fold_train)
    assert info.encoder_info == rec.protocol["encoder_info"]


def test_the_truth_receivers_cannot_be_saved(tmp_path):
    with pytest.raises(UserError, match="--save-models: method oracle-noise is computed from the test truth"):
        tasks(run_config(tmp_path, ["mean", "oracle-noise"]))


# -- plugins ---------------------------------------------------------------------------------
class PluginMean(MeanControl):
    card = MethodCard(name="plugin-mean", description="test: a plugin without the saving hooks", needs=frozenset(),
                      default_run=False)
    Config = MeanConfig


@dataclass(frozen=True)
class ScaledConfig:
    scale: float = 2.0


class PluginScaled(Method):
    """A plugin that saves itself: its one fitted vector as a tensor, its shape in meta."""

    card = MethodCard(name="plugin-scaled", description="test: a plugin with save_state and from_state",
                      needs=frozenset(), default_run=False)
    Config = ScaledConfig

    def fit(self, train, val=None):
        y = np.concatenate([s.targets for s in train.slides]).astype(np.float32)
        self.mean_ = y.mean(axis=0) * np.float32(self.config.scale)
        self.summary = {"trained": True}
        return self

    def predict(self, test):
        return [np.tile(self.mean_, (s.n_spots, 1)).astype(np.float32) for s in test.slides]

    def save_state(self) -> MethodState:
        import torch

        return MethodState(tensors={"mean": torch.from_numpy(self.mean_.copy())}, meta={"genes": len(self.mean_)})

    @classmethod
    def from_state(cls, state, config, *, seed, device):
        method = cls(config, seed=seed, device=device)
        method.mean_ = state.tensors["mean"].numpy()
        assert len(method.mean_) == state.meta["genes"]
        return method


@pytest.fixture
def plugins():
    METHODS.register("plugin-mean", PluginMean)
    METHODS.register("plugin-scaled", PluginScaled)
    yield
    METHODS.unregister("plugin-mean")
    METHODS.unregister("plugin-scaled")


def test_a_plugin_without_the_hooks_is_refused_before_any_cell(tmp_path, plugins):
    with pytest.raises(UserError) as err:
        tasks(run_config(tmp_path, ["mean", "plugin-mean"]))
    text = str(err.value)
    assert "\n" not in text and text.startswith("--save-models: method plugin-mean (module ")
    assert "does not implement save_state/from_state: saving is not supported for it; implement both" in text
    assert not (tmp_path / "res" / "artifacts").exists()
    # without --save-models the same plugin runs as before
    assert len(tasks(run_config(tmp_path, ["plugin-mean"], save_models=False))) == 1


def test_a_plugin_with_the_hooks_is_saved_and_loaded(tmp_path, plugins):
    (task,) = tasks(run_config(tmp_path, ["plugin-scaled"], method_overrides={"plugin-scaled": {"scale": 3.0}}))
    rec, method, info, test, stored = cell_and_model(task)
    assert isinstance(method, PluginScaled) and method.config == ScaledConfig(3.0)
    assert np.array_equal(np.concatenate(predictions(method, test)), stored)
    assert info.method == "plugin-scaled" and info.genes == rec.panel.genes


# -- damaged and crafted folders ------------------------------------------------------------------
@pytest.fixture
def saved_ridge(tmp_path) -> Path:
    (task,) = tasks(run_config(tmp_path / "cell", ["ridge"]))
    assert run_cell(task).ok
    return Path(task.artifact_dir) / MODEL_DIR


def copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "model"))


@pytest.mark.parametrize("name", [WEIGHTS, SKELETON, "config.json"])
def test_a_changed_file_is_refused_by_name(saved_ridge, tmp_path, name):
    folder = copy_of(saved_ridge, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{folder / name}: sha256 differs") as err:
        load_model(folder)
    assert "\n" not in str(err.value)


def test_a_missing_file_and_a_foreign_class_are_refused(saved_ridge, tmp_path):
    folder = copy_of(saved_ridge, tmp_path)
    info = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**info, "class": "elsewhere:Ridge"}))
    with pytest.raises(UserError, match="saved by class elsewhere:Ridge, but method 'ridge' is"):
        load_model(folder)
    (folder / WEIGHTS).unlink()
    with pytest.raises(UserError, match=f"{folder / WEIGHTS}: missing"):
        load_model(folder)


def test_a_config_that_no_longer_rebuilds_the_fitted_one_is_refused(saved_ridge, tmp_path):
    import hashlib

    folder = copy_of(saved_ridge, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["pca_components"] += 1  # as if the method's preset or fields had changed
    (folder / "config.json").write_text(json.dumps(config))
    info = read_model_json(folder)
    info["files"]["config.json"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match=f"{folder / 'config.json'}: rebuilds to config .* fitted with config "
                                        f"{info['config_hash']}"):
        load_model(folder)


class _Calls:
    """Pickles as ``func(*args)``: what a crafted skeleton asks the loader to run."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _crafted(payload) -> bytes:
    return pickle.dumps({"mean_": payload}, protocol=4)


def test_the_restricted_loader_refuses_crafted_skeletons(tmp_path):
    import builtins
    import collections

    from flag_bench import io as fb_io

    marker = tmp_path / "ran"
    crafted = {
        "os.system": _Calls(os.system, f"touch {marker}"),
        "flag_bench.io.atomic_write": _Calls(fb_io.atomic_write, str(marker), print),
        "builtins.eval": _Calls(builtins.eval, "1"),
        # an allowed class, but called with arguments the file chose
        "MeanControl(config)": _Calls(MeanControl, MeanConfig(), 0),
        "OrderedDict(args)": _Calls(collections.OrderedDict, [("a", 1)]),
    }
    for what, payload in crafted.items():
        with pytest.raises(Refused, match="which a saved model may not do") as err:
            restricted_loads(_crafted(payload), {})
        assert "\n" not in str(err.value), what
    # protocol 0 spells a call as INST; the pure-Python opcodes are overridden, not just find_class
    inst = b"(S'x'\nibuiltins\nset\n."
    with pytest.raises(Refused, match="INST"):
        restricted_loads(inst, {})
    # naming a module imports it: never a __main__ (it would run the command line), and never a
    # harness class (the store, the engines), whose state a file could choose
    for module, name in (("flag_bench.cli.__main__", "app"), ("flag_bench.store", "ResultsStore"),
                         ("flag_bench.cluster.slurm", "SlurmExecutor")):
        with pytest.raises(Refused, match=f"names {module}.{name}"):
            restricted_loads(f"c{module}\n{name}\n.".encode(), {})
    assert "flag_bench.cli.__main__" not in sys.modules
    assert not marker.exists()
    # what the built-ins hold still loads: containers, numpy dtypes and scalars, torch.device
    import torch

    ok = {"a": collections.OrderedDict(b=1), "s": {1, 2}, "d": np.dtype("f4"), "x": np.float32(2.5),
          "dev": torch.device("cpu"), "f": frozenset({"g"}), "t": torch.float16}
    assert restricted_loads(pickle.dumps(ok, protocol=4), {}) == ok


def test_a_crafted_skeleton_with_matching_sums_is_refused_by_load_model(saved_ridge, tmp_path):
    import hashlib

    folder = copy_of(saved_ridge, tmp_path)
    marker = tmp_path / "ran"
    (folder / SKELETON).write_bytes(_crafted(_Calls(os.system, f"touch {marker}")))
    info = read_model_json(folder)
    info["files"][SKELETON] = hashlib.sha256((folder / SKELETON).read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps(info))
    with pytest.raises(Refused, match=f"{SKELETON}: names posix.system|{SKELETON}: names os.system"):
        load_model(folder)
    assert not marker.exists()


def test_aliased_tensors_come_back_as_one_object():
    import torch

    from flag_bench.methods.common.state import capture, restore

    m = MeanControl(MeanConfig(), seed=0)
    shared = torch.nn.Parameter(torch.arange(6, dtype=torch.float64).reshape(2, 3))
    m.a_, m.b_ = shared, [shared, shared.detach().t()]
    m.f_ = np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4))
    m.names_ = np.array(["g1", "g22"])
    state = capture(m)
    assert len(state.tensors) == 3  # a_ once, its transposed view once, f_ once
    back = restore(MeanControl, state, MeanConfig(), seed=0, device="cpu")
    assert back.a_ is back.b_[0] and isinstance(back.a_, torch.nn.Parameter) and back.a_.requires_grad
    assert torch.equal(back.b_[1], shared.detach().t()) and back.a_.dtype == torch.float64
    assert back.f_.dtype == np.dtype(">f4") and back.f_.flags.f_contiguous and np.array_equal(back.f_, m.f_)
    assert back.names_.tolist() == ["g1", "g22"]


# -- the run ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_save_models_keeps_models_and_the_scores(tmp_path):
    runner = CliRunner()
    base = ["run", "--datasets", SYN, "--encoder", "color-stats", "--preset", "tiny", "--device", "cpu",
            "--no-progress", "--methods", "mean,knn", "--genes", "10", "--folds", "0", "--patch-px", "32",
            "--split", "patient"]
    plain = runner.invoke(app, [*base, "--results-dir", str(tmp_path / "plain")])
    saved = runner.invoke(app, [*base, "--results-dir", str(tmp_path / "saved"), "--save-models"])
    assert plain.exit_code == 0 and saved.exit_code == 0, saved.output

    def records(d):
        return {r.cell_id: r for r in ResultsStore(tmp_path / d).records()}

    a, b = records("plain"), records("saved")
    assert set(a) == set(b) and len(a) == 2
    for cell_id, rec in b.items():
        assert dict(rec.scores) == dict(a[cell_id].scores)
        assert "model" in rec.artifacts and "model" not in a[cell_id].artifacts
        folder = find_model(tmp_path / "saved", cell_id[:10])
        assert folder == tmp_path / "saved" / "artifacts" / cell_id / MODEL_DIR
        assert read_model_json(folder)["cell_id"] == cell_id
        with pytest.raises(UserError, match="without --save-models; rerun that cell with"):
            find_model(tmp_path / "plain", cell_id)
    # asking for models over cells finished without them says so, instead of skipping them silently
    again = runner.invoke(app, [*base, "--results-dir", str(tmp_path / "plain"), "--save-models"])
    assert again.exit_code == 0 and "2 already finished" in again.output
    assert "--save-models: 2 already finished cell(s) have no saved model" in " ".join(again.output.split())
    assert "--force" in again.output and not any("model" in r.artifacts for r in records("plain").values())


@pytest.mark.slow
def test_isolated_cells_save_the_state_their_child_sent(tmp_path):
    (task,) = tasks(run_config(tmp_path, ["ridge"], isolate=True))
    rec, method, info, test, stored = cell_and_model(task)
    assert rec.provenance["isolation"]["isolated"] and "model" in rec.artifacts
    assert np.array_equal(np.concatenate(predictions(method, test)), stored)
    assert read_model_json(Path(task.artifact_dir) / MODEL_DIR)["class"] == "flag_bench.methods.controls:RidgeControl"


def test_a_skeleton_is_plain_data_without_the_loader():
    """The skeleton holds no tensor data: the weights travel in safetensors only."""
    import torch

    m = MeanControl(MeanConfig(), seed=0)
    m.w_ = torch.zeros(1000)
    state = m.save_state()
    assert len(state.skeleton) < 1000 and set(state.tensors) == {"t0"}
    with pytest.raises(pickle.UnpicklingError):  # persistent ids: the plain unpickler cannot read it
        pickle.load(io.BytesIO(state.skeleton))
