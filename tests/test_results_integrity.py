"""The results a report reads are the results computed: a ``--force`` rerun replaces the record,
the MLflow run and the artifacts together (and the report says when its rows come from different
code); a slide left out of a cell's mean is counted and flagged; a results dir can be moved; a full
disk is a one-line error that leaves the store as it was."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flag_bench.catalog import METHODS
from flag_bench.cli import app
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.errors import UserError
from flag_bench.leaderboard.results import load_results
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanConfig, MeanControl
from flag_bench.spec import ResultSource
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=3,spots_per_slide=40,n_genes=40,seed=3"
runner = CliRunner()
SOURCES = (ResultSource.STORE, ResultSource.MLFLOW)


def cfg(rd: Path, **kw) -> RunConfig:
    base = dict(datasets=(SYN,), methods=("mean",), genes=(5,), encoder="color-stats", preset="tiny", device="cpu",
                results_dir=str(rd))
    base.update(kw)
    return RunConfig(**base)


def report(rd: Path, *args: str) -> str:
    res = runner.invoke(app, ["report", "--results-dir", str(rd), *args], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def mlflow_runs(rd: Path, cell_id: str) -> list:
    from flag_bench.tracking import default_tracking_uri, open_client

    client = open_client(default_tracking_uri(rd))
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.`flag_bench.cell_id` = '{cell_id}'")


# -- 1. --force replaces the record, the MLflow run and the artifacts ------------------------------
class Shifted(MeanControl):
    """The mean control plus ``Shifted.shift``: a method whose output changes between two runs (a fix)."""

    card = MethodCard(name="shifted", description="test: mean control plus a shift", needs=frozenset(),
                      default_run=False)
    Config = MeanConfig
    shift = 0.0

    def predict(self, test):
        return [np.asarray(p) + type(self).shift for p in super().predict(test)]


@pytest.fixture
def shifted():
    METHODS.register("shifted", Shifted)
    yield Shifted
    METHODS.unregister("shifted")
    Shifted.shift = 0.0


@pytest.mark.slow
def test_force_rerun_replaces_store_mlflow_artifacts_and_every_report(tmp_path, shifted, monkeypatch):
    import anndata as ad

    import flag_bench.driver as driver

    rd = tmp_path / "res"
    real = getattr(driver, "code_provenance", lambda prov: prov)
    commit = ["aaaaaaaaaaaa1111"]  # the code version each run computes with
    monkeypatch.setattr(driver, "code_provenance",
                        lambda prov: real({**prov, "git_commit": commit[0], "git_dirty": False}), raising=False)
    assert Driver(cfg(rd, methods=("shifted", "mean"), folds=(0,))).run().ok == 2
    store = ResultsStore(rd)
    (cid,) = [r.cell_id for r in store.records() if r.cell.method == "shifted"]
    before = store.finished(cid).scores["mse"]
    (old_run,) = json.loads(store.mlflow_marker(cid).read_text()).values()

    shifted.shift = 1.0  # the method is "fixed": its predictions move by 1 everywhere
    commit[0] = "bbbbbbbbbbbb2222"
    s = Driver(cfg(rd, methods=("shifted",), folds=(0,), force=True)).run()
    assert (s.ok, s.skipped, s.failed) == (1, 0, [])
    rec = store.finished(cid)
    after = rec.scores["mse"]
    assert after != pytest.approx(before) and after > before  # the store holds the recomputed record

    # the artifacts are the new predictions, and agree with the stored score (the file holds no
    # truth: the results API rebuilds it from the dataset)
    assert "truth" not in ad.read_h5ad(rd / "artifacts" / cid / "predictions.h5ad").layers
    a = load_results(rd, source="store").predictions(cid)
    assert float(np.mean((a.X - a.layers["truth"]) ** 2)) == pytest.approx(after, rel=1e-4)

    # MLflow: one run read, with the new number; the old run is tagged superseded by it
    runs = mlflow_runs(rd, cid)
    live = [r for r in runs if "flag_bench.superseded_by" not in r.data.tags]
    (new,) = live
    assert new.data.metrics["mse"] == after
    (old,) = [r for r in runs if r.info.run_id == old_run]
    assert old.data.tags["flag_bench.superseded_by"] == new.info.run_id
    assert new.data.tags["flag_bench.code_version"] == "0.1.0 @ bbbbbbbbbbbb"
    marker = json.loads(store.mlflow_marker(cid).read_text())
    assert list(marker.values()) == [new.info.run_id]

    # both sources and every text format show the new number, and agree
    frames = {src: load_results(rd, source=src).frame() for src in SOURCES}
    for f in frames.values():
        assert f.loc[f["cell_id"] == cid, "mse"].item() == after
    assert frames[ResultSource.STORE].equals(frames[ResultSource.MLFLOW])
    for src in SOURCES:
        csv = report(rd, "--source", src, "--format", "csv", "--metric", "mse")
        (row,) = [line for line in csv.splitlines() if ",shifted," in line]
        assert repr(after) in row and repr(before) not in row
        for fmt in ("table", "markdown"):  # csv is the table only
            text = report(rd, "--source", src, "--format", fmt, "--metric", "mse")
            # the "mean" row was computed by the old code, the "shifted" row by the new one
            assert "2 code versions" in text and "0.1.0 @ aaaaaaaaaaaa: 1 cell(s)" in text, text
        html = tmp_path / f"{src}.html"
        report(rd, "--source", src, "--format", "html", "--metric", "mse", "--output", str(html))
        assert "2 code versions" in html.read_text()

    # a SLURM task collected twice is still written nowhere again
    from flag_bench.tracking import Tracker, default_tracking_uri

    tracker = Tracker(default_tracking_uri(rd), rd, "default")
    driver.persist(store, tracker, rec, None)
    assert len(mlflow_runs(rd, cid)) == 2


def test_sync_after_an_offline_force_rerun_logs_the_new_record_and_supersedes_the_old(tmp_path, shifted):
    from flag_bench.tracking import Tracker, default_tracking_uri

    rd = tmp_path / "res"
    assert Driver(cfg(rd, methods=("shifted",), folds=(0,))).run().ok == 1
    store = ResultsStore(rd)
    (rec,) = store.records()
    new = dataclasses.replace(rec, scores={**rec.scores, "mse": 123.0}, finished="2999-01-01T00:00:00+0000")

    class Offline:
        uri = default_tracking_uri(rd)

        def safely(self, what, fn, *a, **k):
            return None

        log_record = supersede = None

    from flag_bench.driver import persist

    persist(store, Offline(), new, None)  # MLflow was down while the recomputed record was stored
    assert store.finished(rec.cell_id).scores["mse"] == 123.0
    assert store.logged_run_id(rec.cell_id, Offline.uri) is None  # the old run's marker is gone
    tracker = Tracker(Offline.uri, rd, "default")
    assert tracker.sync(store) == 1
    live = [r for r in mlflow_runs(rd, rec.cell_id) if "flag_bench.superseded_by" not in r.data.tags]
    assert [r.data.metrics["mse"] for r in live] == [123.0]
    assert load_results(rd, source="mlflow").frame()["mse"].tolist() == [123.0]


# -- 6. a NaN slide score is counted, and the row is flagged --------------------------------------
def test_nan_slide_is_counted_in_notes_and_flagged_by_every_report(tmp_path, monkeypatch):
    import flag_bench.scoring as scoring

    real = scoring._slide_scores
    first: list[str] = []

    def one_nan_slide(metrics, y, p, ctx, notes):
        vals, genes = real(metrics, y, p, ctx, notes)
        first.append(ctx.slide_id)
        if ctx.slide_id == first[0]:  # the first test slide ever scored has a NaN pcc_mean
            vals["pcc_mean"] = math.nan
        return vals, genes

    monkeypatch.setattr(scoring, "_slide_scores", one_nan_slide)
    rd = tmp_path / "res"
    syn = "synthetic:n_slides=4,n_patients=2,spots_per_slide=40,n_genes=40,seed=3"
    assert Driver(cfg(rd, datasets=(syn,), methods=("mean",), split="patient")).run().ok == 2
    recs = {r.cell_id: r for r in ResultsStore(rd).records()}
    hit = [r for r in recs.values() if first[0] in r.scores_per_slide]
    (bad,) = hit
    good = [r for r in recs.values() if r is not bad]
    assert len(bad.scores_per_slide) == 2
    assert bad.notes["n_slides.pcc_mean"] == 2 and bad.notes["n_nan_slides.pcc_mean"] == 1
    assert bad.notes["n_slides.mse"] == 2 and bad.notes["n_nan_slides.mse"] == 0
    assert all(r.notes["n_nan_slides.pcc_mean"] == 0 for r in good)
    other = next(s for s in bad.scores_per_slide if s != first[0])
    assert bad.scores["pcc_mean"] == bad.scores_per_slide[other]["pcc_mean"]  # the mean of one slide
    for src in SOURCES:
        res = load_results(rd, source=src)
        assert res.nan_slides(bad.cell_id) == {"pcc_mean": (1, 2)}
        assert all(res.nan_slides(r.cell_id) == {} for r in good)
        for fmt in ("table", "markdown"):  # csv is the table only
            text = " ".join(report(rd, "--source", src, "--format", fmt).split())
            assert "fewer test slides averaged than the cells have" in text, text
            assert "mean (tiny): 1 cell(s), pcc_mean" in text, text


def test_nan_slide_flag_is_absent_when_every_slide_counts():
    import pandas as pd

    from flag_bench.leaderboard.flags import dataset_flags

    class Res:
        def panel_stats(self, cell_id):
            return {}

        def code_versions(self):
            return {"a": "0.1.0", "b": "0.1.0"}

        def nan_slides(self, cell_id):
            return {}

    g = pd.DataFrame({"cell_id": ["a", "b"], "protocol": ["{}", "{}"], "panel_id": ["p", "p"],
                      "method": ["mean", "mean"], "config_label": ["tiny", "tiny"]})
    assert dataset_flags(Res(), g) == ()


# -- 9. a results dir moved elsewhere ----------------------------------------------------------------
@pytest.mark.slow
def test_a_moved_results_dir_reports_from_both_sources_and_keeps_running(tmp_path):
    rd = tmp_path / "old" / "res"
    assert Driver(cfg(rd, methods=("mean", "ridge"))).run().ok == 6

    def reports(where: Path, tag: str) -> dict:
        out = {}
        for src in SOURCES:
            out[(src, "table")] = report(where, "--source", src, "--format", "table")
            html = tmp_path / f"{tag}-{src}.html"
            report(where, "--source", src, "--format", "html", "--output", str(html))
            out[(src, "html")] = html.read_text()
        return out

    before = reports(rd, "before")
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(rd, moved)
    shutil.rmtree(tmp_path / "old")
    after = reports(moved, "after")
    for key, text in before.items():
        assert after[key].replace(str(moved), str(rd)) == text, key
    res = load_results(moved, source="mlflow")
    cid = res.frame()["cell_id"].iloc[0]
    assert res.per_gene(cid).shape[0] == 5 and res.predictions(cid).n_vars == 5
    assert str(moved) in str(res._loaded.fetch(cid, "predictions.h5ad"))

    # running on in the moved dir: new runs' artifacts go there, never to the old path
    assert Driver(cfg(moved, methods=("mean",), folds=(0,), force=True)).run().ok == 1
    assert not (tmp_path / "old").exists()
    new = load_results(moved, source="mlflow")
    for cid in new.frame()["cell_id"]:
        assert new.per_gene(cid).shape[0] == 5
    assert new.frame().equals(load_results(moved, source="store").frame())
    reports(moved, "later")


# -- 11. a full disk -----------------------------------------------------------------------------------
def _fill_disk_after(monkeypatch, nbytes: int) -> list[Path]:
    """Path.write_bytes writes ``nbytes`` then fails as a full disk would; returns the paths tried."""
    tried: list[Path] = []

    def write_bytes(self, data):
        tried.append(self)
        with open(self, "wb") as fh:
            fh.write(bytes(data)[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return tried


def test_disk_full_is_one_line_naming_the_file_and_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    rd = tmp_path / "res"
    assert Driver(cfg(rd, folds=(0,))).run().ok == 1
    store = ResultsStore(rd)
    (rec,) = store.records()
    path = store.record_path(rec.cell_id)
    old = path.read_bytes()
    newer = dataclasses.replace(rec, scores={**rec.scores, "mse": 9.0})
    with monkeypatch.context() as m:
        tried = _fill_disk_after(m, 10)
        with pytest.raises(UserError) as err:
            store.write(newer)
        assert tried and tried[0].parent == path.parent and tried[0] != path
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "ENOSPC" in msg and "disk is full" in msg
    assert path.read_bytes() == old  # the previous record, intact
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no temp file left

    # the same through a whole run: one line, nothing half-written, the previous record kept
    with monkeypatch.context() as m:
        _fill_disk_after(m, 10)
        with pytest.raises(UserError, match="ENOSPC"):
            Driver(cfg(rd, folds=(0,), force=True)).run()
    assert path.read_bytes() == old
    assert not [p for p in rd.rglob(".*.tmp-*")]
    assert not list((rd / "claims").glob("*.claim"))

    # the CLI prints it as one line and exits 2
    with monkeypatch.context() as m:
        _fill_disk_after(m, 10)
        res = runner.invoke(app, ["run", "--datasets", SYN, "--methods", "mean", "--genes", "5", "--encoder",
                                  "color-stats", "--preset", "tiny", "--device", "cpu", "--folds", "0",
                                  "--results-dir", str(rd), "--force", "--no-progress"])
    assert res.exit_code == 2 and "Traceback" not in res.output and "ENOSPC" in res.output, res.output


def test_atomic_write_removes_its_temp_file_and_fsyncs_the_folder(tmp_path, monkeypatch):
    import flag_bench.io as io

    target = tmp_path / "x.json"
    target.write_text("old")

    def fails(p: Path) -> None:
        p.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        io.atomic_write(target, fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"] and target.read_text() == "old"

    synced: list[bool] = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    io.atomic_write_json(target, {"a": 1})
    assert synced == [False, True]  # the file, then its folder (the rename)
    assert json.loads(target.read_text()) == {"a": 1}
