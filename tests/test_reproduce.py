"""`flag-bench reproduce CELL_ID`: one grid with a cell of every built-in method family, each
reproduced bit for bit; the refusals (changed data file, other code, other weights, unknown,
ambiguous and failed cells) come before anything is computed; a tampered score is named."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import layouts
from flag_bench import reproduce as rp
from flag_bench.cli import app
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.errors import UserError
from flag_bench.record import CellRecord, MethodInfo
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=3,spots_per_slide=40,n_genes=40,seed=3"
# one cell of each built-in family: controls (mean, ridge), flag, stem, bleep, histogene, triplex, stflow
FAMILIES = ("mean", "ridge", "flag", "stem", "bleep", "histogene", "triplex", "stflow")
CODE_KEYS = ("flag_bench", "git_commit", "git_dirty", "git_diff_sha256")


@pytest.fixture(scope="module", autouse=True)
def _one_code_version(tmp_path_factory):
    """The code version this module first sees, for every grid and reproduction in it: other work
    editing this checkout between a grid and its reproduction would change the digest of its
    uncommitted changes (a clean clone has none). Embeddings of the module's grids go to its own
    cache (conftest's cache fixture is per test, and the module's grid is computed before it)."""
    import flag_bench.driver as driver

    real = driver.code_provenance
    seen: dict = {}

    def once(prov: dict) -> dict:
        if "code" not in seen:
            seen["code"] = {k: v for k, v in real(prov).items() if k in CODE_KEYS}
        return {**{k: v for k, v in prov.items() if k not in CODE_KEYS}, **seen["code"]}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "code_provenance", once)
        mp.setenv("FLAG_BENCH_CACHE", str(tmp_path_factory.mktemp("embed-cache")))
        yield


def compute(cfg: RunConfig) -> Path:
    """The cells of ``cfg`` computed and stored as the driver does, without its MLflow database
    (seconds per results dir): for the quick tests; the family grid goes through the driver."""
    import flag_bench.driver as driver
    from flag_bench.cell import run_cell
    from flag_bench.measure import provenance
    from flag_bench.plan import plan_grid

    store = ResultsStore(cfg.results_dir)
    plan = plan_grid(cfg, device="cpu", provenance=driver.code_provenance(provenance("cpu")),
                     results_dir=cfg.results_dir)
    for task in plan.tasks:
        rec = run_cell(task)
        assert rec.ok, rec.error
        store.write(rec)
    return Path(cfg.results_dir)


def invoke(*args: str):
    return CliRunner().invoke(app, ["reproduce", *args])


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory) -> Path:
    res = tmp_path_factory.mktemp("grid")
    cfg = RunConfig(datasets=(SYN,), methods=FAMILIES, genes=(8,), folds=(0,), encoder="color-stats",
                    preset="tiny", device="cpu", patch_px=32, results_dir=str(res))
    summary = Driver(cfg, progress=False).run()
    assert summary.ok == len(FAMILIES) and not summary.failed, summary.failed
    return res


@pytest.fixture(scope="module")
def controls_dir(tmp_path_factory) -> Path:
    """Two control cells (seconds): what the quick tests of refusals and tampering start from."""
    return compute(RunConfig(datasets=(SYN,), methods=("mean", "ridge"), genes=(8,), folds=(0,), encoder="color-stats",
                             preset="tiny", device="cpu", results_dir=str(tmp_path_factory.mktemp("controls"))))


def _by_method(results: Path) -> dict[str, CellRecord]:
    return {r.cell.method: r for r in ResultsStore(results).records()}


@pytest.fixture(scope="module")
def grid(grid_dir) -> dict[str, CellRecord]:
    return _by_method(grid_dir)


@pytest.fixture(scope="module")
def controls(controls_dir) -> dict[str, CellRecord]:
    return _by_method(controls_dir)


@pytest.mark.slow
@pytest.mark.parametrize("method", FAMILIES)
def test_every_family_reproduces_bit_for_bit(grid, grid_dir, method):
    rec = grid[method]
    res = invoke(rec.cell_id[:10], "--results-dir", str(grid_dir))
    assert res.exit_code == 0, res.output
    assert f"REPRODUCED: all {len(rec.scores)} metrics" in res.output, res.output
    assert "(bit-identical)" in res.output and "DIFF" not in res.output
    threads = rec.costs["torch_threads"]
    assert f"with {threads} torch thread(s) as recorded" in res.output


def test_a_changed_data_file_is_refused_before_computing(tmp_path, monkeypatch):
    import anndata as ad

    from flag_bench.datasets.readers import h5ad

    data = tmp_path / "slides"
    for i in range(3):
        s = layouts.synthetic_slide(seed=i)
        layouts.write_h5ad_arrays(data / f"S{i}.h5ad", s["counts"], s["barcodes"], s["genes"], s["coords"])
    spec = f"h5ad:path={data},pixel_size=2"
    cfg = RunConfig(datasets=(spec,), methods=("mean",), genes=(10,), folds=(0,), encoder="color-stats",
                    preset="tiny", device="cpu", results_dir=str(tmp_path / "res"))
    (rec,) = ResultsStore(compute(cfg)).records()
    a = ad.read_h5ad(data / "S1.h5ad")
    a.X[0, 0] += 1  # one count of one spot
    a.write_h5ad(data / "S1.h5ad")
    now = h5ad.load(path=str(data), pixel_size=2).version
    assert now != rec.cell.dataset_version

    def never(task, on_event=None):
        raise AssertionError("run_cell was called for a refused cell")

    monkeypatch.setattr(rp, "run_cell", never)
    res = invoke(rec.cell_id, "--results-dir", cfg.results_dir)
    assert res.exit_code == 2, res.output
    err = " ".join(res.output.split())
    assert f"dataset {rec.cell.dataset_spec}" in err and now in err and rec.cell.dataset_version in err, err
    assert "restore the data" in err and "Traceback" not in res.output


def _store_with(tmp_path: Path, *records: tuple[str, dict]) -> Path:
    """A results store holding these record files (name, JSON)."""
    cells = tmp_path / "store" / "cells"
    cells.mkdir(parents=True)
    for name, doc in records:
        (cells / name).write_text(json.dumps(doc))
    return cells.parent


def test_a_tampered_score_is_named(controls, tmp_path):
    rec = controls["mean"]
    doc = rec.to_json()
    doc["scores"]["mse"] = doc["scores"]["mse"] * 1.5
    slide = next(iter(doc["scores_per_slide"]))
    doc["scores_per_slide"][slide]["pcc_mean"] = 0.25
    store = _store_with(tmp_path, (f"{rec.cell_id}.json", doc))
    res = invoke(rec.cell_id, "--results-dir", str(store))
    assert res.exit_code == 1, res.output
    verdict = " ".join(res.output[res.output.index("NOT REPRODUCED"):].split())
    assert "2 score(s)" in verdict and "mse" in verdict and f"{slide} / pcc_mean" in verdict, verdict


def test_unknown_ambiguous_and_failed_cells_are_refused(controls, tmp_path):
    rec = controls["mean"]
    doc = rec.to_json()
    failed = {**doc, "status": "failed", "scores": {}, "scores_per_slide": {},
              "error": {"stage": "fit", "type": "RuntimeError", "message": "boom in fit", "traceback": ""}}
    store = _store_with(tmp_path, ("aaaa1111.json", doc), ("aaaa2222.json", doc),
                        (f"{rec.cell_id}.failed-20260101T000000-1-1.json", failed))
    res = invoke("zzzz", "--results-dir", str(store))
    assert res.exit_code == 2 and "no record" in res.output and "aaaa1111" in res.output, res.output
    res = invoke("aaaa", "--results-dir", str(store))
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "2 records match" in out and "aaaa1111, aaaa2222" in out, res.output
    res = invoke(rec.cell_id[:12], "--results-dir", str(store))
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "failed (boom in fit)" in out, res.output
    res = invoke("abc", "--results-dir", str(tmp_path / "nowhere"))
    assert res.exit_code == 2 and "no cells/ folder" in res.output, res.output


def test_other_code_is_refused_unless_allowed_and_then_not_bit_identical(controls, tmp_path):
    rec = controls["mean"]
    doc = rec.to_json()
    doc["provenance"] = {**doc["provenance"], "flag_bench": "0.0.1", "git_commit": "0" * 40}
    store = _store_with(tmp_path, (f"{rec.cell_id}.json", doc))
    res = invoke(rec.cell_id, "--results-dir", str(store))
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "code version" in out and "0.0.1 @ 000000000000" in out, res.output
    res = invoke(rec.cell_id, "--results-dir", str(store), "--allow-other-code")
    out = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "within the tolerance" in out and f"<= {rp.DEFAULT_ATOL:g} + {rp.DEFAULT_RTOL:g} x" in out, out


def test_other_hardware_is_compared_within_the_tolerance(controls, tmp_path):
    rec = controls["mean"]
    doc = rec.to_json()
    doc["provenance"] = {**doc["provenance"], "cpu_model": "Another CPU 9000"}
    store = _store_with(tmp_path, (f"{rec.cell_id}.json", doc))
    res = invoke(rec.cell_id, "--results-dir", str(store))
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "recorded Another CPU 9000" in out, res.output
    assert "within the tolerance; every value bit-identical" in out, out
    doc["device"] = "cuda:7"
    (store / "cells" / f"{rec.cell_id}.json").write_text(json.dumps(doc))
    res = invoke(rec.cell_id, "--results-dir", str(store))
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "computed on cuda:7, which this machine lacks" in out, res.output


def test_a_plan_that_gives_another_cell_says_what_differs(controls, tmp_path):
    rec = controls["mean"]
    # a record claiming another training set than the split gives now
    cell = dataclasses.replace(rec.cell, fold_train=(*rec.cell.fold_train, "S99"))
    doc = dataclasses.replace(rec, cell=cell).to_json()
    store = _store_with(tmp_path, (f"{cell.cell_id}.json", doc))
    res = invoke(cell.cell_id, "--results-dir", str(store))
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and f"planned again it is cell {rec.cell_id}" in out, res.output
    assert "fold_train: recorded" in out and "S99" in out, out


def test_reproduce_from_a_bundle(controls, controls_dir, tmp_path):
    from flag_bench.bundle import export

    export(controls_dir, tmp_path / "b.tar.gz")
    rec = controls["ridge"]
    res = invoke(rec.cell_id, "--from", str(tmp_path / "b.tar.gz"))
    assert res.exit_code == 0 and "(bit-identical)" in res.output, res.output


# -- the checks and the comparison as functions ---------------------------------------------------
def test_tolerance_rules():
    exact = rp.Tolerance(True, 0.0, 0.0, "same")
    assert exact.agrees(math.nan, math.nan) and not exact.agrees(math.nan, 0.0) and not exact.agrees(0.0, math.nan)
    x = 0.1 + 0.2
    assert exact.agrees(x, x) and not exact.agrees(x, np.nextafter(x, 1.0))
    loose = rp.choose_tolerance(["device cuda, recorded cpu"], None, None)
    assert not loose.exact and loose.atol == rp.DEFAULT_ATOL and loose.rtol == rp.DEFAULT_RTOL
    edge = loose.atol + loose.rtol * 2.0
    assert loose.agrees(2.0, 2.0 + edge * 0.99) and not loose.agrees(2.0, 2.0 + edge * 1.01)
    assert rp.choose_tolerance([], None, None).exact
    assert not rp.choose_tolerance([], 0.1, None).exact  # a tolerance given is a tolerance used
    with pytest.raises(UserError, match="0 or more"):
        rp.choose_tolerance([], -1.0, None)
    got = {c.name: c for c in rp.compare_scores({"a": 1.0, "b": None, "gone": 2.0}, {"a": 1.0, "b": None, "added": 3.0},
                                                exact)}
    assert got["a"].agrees and got["b"].agrees and got["b"].diff == 0
    assert not got["gone"].agrees and got["gone"].missing == "new"
    assert got["added"].agrees and got["added"].missing == "recorded"


def test_help_states_the_default_tolerance():
    res = CliRunner().invoke(app, ["reproduce", "--help"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and f"defaults {rp.DEFAULT_ATOL:g} and {rp.DEFAULT_RTOL:g}" in text, text


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_method_files_with_a_recorded_sha256_are_checked(controls, tmp_path):
    table = tmp_path / "table.tsv"
    table.write_text("gene\td0\nG1\t0.5\n")
    method = MethodInfo(name="flag", preset="tiny", config={"gene_embedding_options": [["path", str(table)]]},
                        summary={"alignment": {"source": f"user gene table {table}", "sha256": _sha(table)}})
    rec = dataclasses.replace(controls["mean"], method=method)
    (line,) = rp.check_method_files(rec)
    assert "as recorded" in line and "gene_embedding_options[0][1]" in line
    table.write_text("gene\td0\nG1\t0.75\n")
    with pytest.raises(UserError, match=r"has sha256 .* the record read sha256"):
        rp.check_method_files(rec)
    table.unlink()
    with pytest.raises(UserError, match="does not exist now"):
        rp.check_method_files(rec)


def test_encoder_weights_with_another_sha256_are_refused(controls, tmp_path, monkeypatch):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights v1")
    info = {"name": "fm", "weights": {"path": str(weights), "sha256": _sha(weights)}}
    rec = dataclasses.replace(controls["mean"], protocol={**controls["mean"].protocol, "encoder": "fm", "encoder_info": info})

    class Found:
        def weights_file(self):
            return weights

    monkeypatch.setattr(rp.resolve, "encoder", lambda name: Found())
    assert "as recorded" in rp.check_encoder_weights(rec)
    weights.write_bytes(b"weights v2")
    with pytest.raises(UserError, match=r"encoder fm: weights .* have sha256 .* the record used"):
        rp.check_encoder_weights(rec)
    assert "built-in" in rp.check_encoder_weights(controls["mean"])


def test_pathway_cells_reproduce_and_a_changed_gene_set_file_is_refused(tmp_path, monkeypatch):
    genes = [f"SYN{i:04d}" for i in range(1, 41)]  # the synthetic dataset's gene symbols
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("".join(f"SET{k}\tdesc\t" + "\t".join(genes[k::4]) + "\n" for k in range(4)))
    cfg = RunConfig(datasets=(SYN,), methods=("ridge",), genes=(20,), folds=(0,), encoder="color-stats",
                    preset="tiny", device="cpu", gene_sets=f"file:{gmt}", results_dir=str(tmp_path / "res"))
    (rec,) = ResultsStore(compute(cfg)).records()
    assert rec.cell.gene_sets and "pathway_pcc" in rec.scores
    res = invoke(rec.cell_id, "--results-dir", cfg.results_dir)
    assert res.exit_code == 0 and "(bit-identical)" in res.output and "gene sets file:" in res.output, res.output
    gmt.write_text(gmt.read_text().replace("SET0", "SET9"))

    def never(task, on_event=None):
        raise AssertionError("run_cell was called for a refused cell")

    monkeypatch.setattr(rp, "run_cell", never)
    res = invoke(rec.cell_id, "--results-dir", cfg.results_dir)
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and f"gene sets file:{gmt.resolve()}: sha256" in out, res.output


def test_gene_sets_of_a_record_enter_the_rebuilt_config(controls):
    rec = controls["mean"]
    assert rp.recorded_gene_sets(rec) is None and rp.rebuild_config(rec, device="cpu", results_dir="x").gene_sets is None
    with_sets = dataclasses.replace(rec, protocol={**rec.protocol, "gene_sets": {"spec": "file:sets.gmt", "sha256": "0"}})
    assert rp.rebuild_config(with_sets, device="cpu", results_dir="x").gene_sets == "file:sets.gmt"
