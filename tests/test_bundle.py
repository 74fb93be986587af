"""Bundles (issue 25): `flag-bench export` writes a results dir with a sha256 manifest, and
`flag-bench report --from` prints the leaderboard the results dir prints, refuses a bundle edited
after export, merges several labs' bundles and refuses boards whose scores do not mean the same."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flag_bench.bundle import BUNDLE_SCHEMA_VERSION, INFO, MANIFEST, check_shareable, export, write_manifest
from flag_bench.catalog import METHODS
from flag_bench.cli import app
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.errors import UserError
from flag_bench.methods.base import MethodCard
from flag_bench.methods.controls import MeanConfig, MeanControl
from flag_bench.record import CellRecord
from flag_bench.store import ResultsStore

SYN = "synthetic:n_slides=2,spots_per_slide=40,n_genes=30,seed=3"  # two slides: two folds
runner = CliRunner()
FORMATS = ("markdown", "csv", "json")
SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "bundle.schema.json"


class Exploding(MeanControl):
    card = MethodCard(name="bundle-exploding", description="test: always fails in fit", needs=frozenset(),
                      default_run=False)
    Config = MeanConfig

    def fit(self, train, val=None):
        raise RuntimeError("boom")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A results dir ``res``: mean and ridge on two folds, a method failing in both, and a planned
    cell that never ran; the home folder is the grid's parent (so bundle.json must not name it)."""
    root = tmp_path_factory.mktemp("bundle")
    METHODS.register("bundle-exploding", Exploding)
    try:
        cfg = RunConfig(datasets=(SYN,), methods=("mean", "ridge", "bundle-exploding"), genes=(10,),
                        encoder="color-stats", preset="tiny", device="cpu", results_dir=str(root / "res"))
        summary = Driver(cfg).run()
    finally:
        METHODS.unregister("bundle-exploding")
    assert summary.ok == 4 and len(summary.failed) == 2
    ResultsStore(root / "res").write_plan(
        {"datasets": [SYN], "methods": ["knn"], "genes": [10], "preset": "tiny"},
        [{"cell_id": "feedfeedfeedfeed", "dataset": "synthetic", "method": "knn", "n_genes": 10, "preset": "tiny",
          "fold": "test=S01", "seed": 0, "description": "synthetic G=10 knn test=S01 seed=0"}])
    return root


@pytest.fixture
def at(grid, monkeypatch):
    """Run in the grid's folder with it as the home folder: the report's rerun command names the
    results dir as given (``res``), which is the name a bundle records."""
    monkeypatch.chdir(grid)
    monkeypatch.setenv("HOME", str(grid))
    return grid


def _export(*args: str) -> str:
    res = runner.invoke(app, ["export", *args])
    assert res.exit_code == 0, res.output
    return res.stdout


def _report(*args: str):
    return runner.invoke(app, ["report", *args])


def _ok(*args: str) -> str:
    res = _report(*args)
    assert res.exit_code == 0, res.output
    return res.stdout


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _copy(src: Path, name: str) -> Path:
    dst = src.parent / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def bundles(grid):
    """The grid exported as a folder and as an archive (at the grid's folder, HOME there)."""
    mp = pytest.MonkeyPatch()
    mp.chdir(grid)
    mp.setenv("HOME", str(grid))
    try:
        folder = _export("res", "--output", "b")
        archive = _export("res", "-o", "b.tar.gz")
    finally:
        mp.undo()
    return folder, archive


def test_export_summary_and_layout(at, bundles):
    folder, archive = bundles
    store = ResultsStore(at / "res")
    n_ok, n_failed = len(list(store.records())), len(list(store.failures()))
    failed_cells = len({rec.cell_id for _, rec in store.failures()})
    n_plans = len(store.plans())
    assert failed_cells == 2 and n_plans == 2  # the exploding method's two folds; the run's plan and ours
    assert folder.startswith(f"wrote b: {n_ok} cells, {failed_cells} failed, {n_plans} plans, ")
    assert folder.strip().endswith("MB") and archive.startswith(f"wrote b.tar.gz: {n_ok} cells, {failed_cells} failed")
    b = at / "b"
    for rec in store.records():  # byte for byte, and the store reader reads the bundle as it is
        assert (b / "cells" / f"{rec.cell_id}.json").read_bytes() == store.record_path(rec.cell_id).read_bytes()
        assert sorted(p.name for p in (b / "artifacts" / rec.cell_id).iterdir()) == [
            "config.json", "genes.txt", "per_gene_metrics.csv"]  # no predictions without --predictions
    assert len(list(ResultsStore(b).failures())) == n_failed and ResultsStore(b).plans() == store.plans()
    lines = (b / MANIFEST).read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    files = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert paths == files and INFO in paths
    info = json.loads((b / INFO).read_text())
    assert info["counts"] == {"cells": n_ok, "failed": failed_cells, "failed_attempts": n_failed, "plans": n_plans,
                              "predictions": 0, "models": 0}
    assert info["results_dir_name"] == "res" and info["environment"]["cpu_model"] == next(
        iter(store.records())).provenance["cpu_model"]
    # nothing of the exporting user's home folder, nor a leftover temporary folder
    assert str(at) not in (b / INFO).read_text()
    assert not [p for p in at.iterdir() if ".tmp-" in p.name]
    with tarfile.open(at / "b.tar.gz") as tar:
        assert {m.uname for m in tar.getmembers()} == {""}
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == sorted(f"b/{p}" for p in [*files, MANIFEST])


def test_bundle_json_validates_against_the_schema(at, bundles):
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    info = json.loads((at / "b" / INFO).read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(info)
    bad = {**info, "counts": {**info["counts"], "cells": -1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_from_a_bundle_is_the_results_dirs_report(at, bundles, fmt):
    want = _ok("--results-dir", "res", "--format", fmt)
    if fmt == "markdown":
        assert "bundle-exploding" in want  # the failed and the planned-but-missing cells are listed, and the rerun command
        assert "synthetic G=10 knn test=S01 seed=0" in want and "--results-dir res" in want
    assert _ok("--from", "b", "--format", fmt) == want
    assert _ok("--from", "b.tar.gz", "--format", fmt) == want


def test_report_from_is_exclusive_with_the_other_sources(at, bundles):
    _one_line_error(_report("--from", "b", "--source", "store"), "--from", "--source")
    _one_line_error(_report("--from", "b", "--results-dir", "res"), "--results-dir")


def test_an_edited_record_fails_the_manifest_naming_the_file(at, bundles):
    b = _copy(at / "b", "edited")
    # a finished record (a failed attempt, <id>.failed-<time>.json, holds no scores)
    path = next(p for p in sorted((b / "cells").glob("*.json")) if ".failed-" not in p.name)
    text = path.read_text()
    i = text.index('"pcc_mean": ') + len('"pcc_mean": ')
    j = next(k for k in range(i, len(text)) if text[k].isdigit() and text[k] != "0")
    path.write_text(text[:j] + str((int(text[j]) % 9) + 1) + text[j + 1:])  # one score digit changed
    line = _one_line_error(_report("--from", "edited"), f"edited/cells/{path.name}", "sha256 differs")
    assert "fresh export" in line


def test_a_removed_or_added_file_fails_naming_it(at, bundles):
    b = _copy(at / "b", "removed")
    gone = next((b / "artifacts").glob("*/genes.txt"))
    gone.unlink()
    _one_line_error(_report("--from", "removed"), f"removed/{gone.relative_to(b).as_posix()}", "missing")
    b = _copy(at / "b", "added")
    (b / "cells" / "0000000000000000.json").write_text("{}")
    _one_line_error(_report("--from", "added"), "added/cells/0000000000000000.json", "not listed")


def test_an_edited_archive_fails_too(at, bundles):
    # the archive repacked with one record changed (a hand edit of an unpacked bundle, packed again)
    src, dst = at / "b.tar.gz", at / "edited.tar.gz"
    edited = None
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if data is not None and edited is None and m.name.startswith("b/cells/") and ".failed-" not in m.name:
                data, edited = data.replace(b'"status": "ok"', b'"status":  "ok"', 1), m.name
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    assert edited is not None
    _one_line_error(_report("--from", "edited.tar.gz"), f"edited.tar.gz/{edited[2:]}", "sha256 differs")


def test_an_archive_with_a_link_or_an_escaping_path_is_refused(at, tmp_path):
    for name, member in (("link", tarfile.TarInfo("b/cells/x.json")), ("escape", tarfile.TarInfo("../x.json"))):
        if name == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive = tmp_path / f"{name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.addfile(member, io.BytesIO(b"") if name == "escape" else None)
        _one_line_error(_report("--from", str(archive)), str(archive), "plain files only")


def test_a_newer_bundle_is_refused(at, bundles):
    b = _copy(at / "b", "newer")
    info = json.loads((b / INFO).read_text())
    (b / INFO).write_text(json.dumps({**info, "schema_version": BUNDLE_SCHEMA_VERSION + 1}))
    write_manifest(b)  # as a newer flag-bench would have written it
    _one_line_error(_report("--from", "newer"), "newer", "made by a newer flag-bench")


def test_export_refuses_an_existing_output_and_leaves_nothing_on_failure(at, bundles, monkeypatch):
    _one_line_error(runner.invoke(app, ["export", "res", "-o", "b"]), "--output b", "already")
    _one_line_error(runner.invoke(app, ["export", "res", "-o", "b.tar.gz"]), "--output b.tar.gz", "already")

    def broken():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("flag_bench.bundle.environment", broken)
    _one_line_error(runner.invoke(app, ["export", "res", "-o", "full.tgz"]), "full.tgz", "nothing was written")
    assert not (at / "full.tgz").exists() and not [p for p in at.iterdir() if ".tmp-" in p.name]


def test_bundle_json_never_carries_a_credential_or_the_home_folder(at):
    with pytest.raises(UserError, match="credential"):
        check_shareable({"environment": {"uri": "postgresql://me:s3cret@db/mlflow"}}, "bundle.json")
    with pytest.raises(UserError, match="home folder"):
        check_shareable({"results_dir_name": str(at / "res")}, "bundle.json")
    check_shareable({"results_dir_name": "res"}, "bundle.json")


# -- several bundles ----------------------------------------------------------------------------
def _by_method(grid: Path, name: str, methods: tuple[str, ...]) -> Path:
    out = grid / name
    shutil.rmtree(out, ignore_errors=True)
    export(grid / "res", out, select=lambda rec: rec.cell.method in methods)
    return out


def _rewrite(bundle: Path, change) -> None:
    """Another lab's bundle: each finished record of ridge passed through ``change`` (a new cell
    identity gets its new file name and artifacts folder), then a fresh manifest, as its export
    would have written it."""
    for path in sorted((bundle / "cells").glob("*.json")):
        rec = CellRecord.loads(path.read_text())
        if ".failed-" in path.name or rec.cell.method != "ridge":
            continue
        new = change(rec)
        path.unlink()
        (bundle / "cells" / f"{new.cell_id}.json").write_text(new.dumps())
        if new.cell_id != rec.cell_id:
            (bundle / "artifacts" / rec.cell_id).rename(bundle / "artifacts" / new.cell_id)
    write_manifest(bundle)


def test_a_grid_split_in_two_bundles_merges_into_the_whole_board(at, bundles):
    _by_method(at, "lab-a", ("mean", "bundle-exploding"))
    _by_method(at, "lab-b", ("ridge",))
    for fmt in FORMATS:
        want = _ok("--results-dir", "res", "--format", fmt)
        assert _ok("--from", "lab-a", "--from", "lab-b", "--format", fmt) == want
        assert _ok("--from", "lab-b", "--from", "lab-a", "--format", fmt) == want


def test_a_cell_in_two_bundles_is_shown_once_and_a_score_difference_is_said(at, bundles):
    other = _by_method(at, "lab-c", ("ridge",))

    def nudged(rec):
        return dataclasses.replace(rec, scores={**rec.scores, "pcc_mean": rec.scores["pcc_mean"] + 0.125})

    _rewrite(other, nudged)
    res = _report("--from", "b", "--from", "lab-c", "--format", "csv")
    assert res.exit_code == 0 and res.stdout == _ok("--from", "b", "--format", "csv")
    assert "--from b and --from lab-c with different scores (pcc_mean" in res.stderr


@pytest.mark.parametrize("field,value,what", [("dataset_version", "0ther0ther00", "dataset version"),
                                              ("protocol_version", "p0", "protocol version"),
                                              ("gene_sets", "her2-breast@0ther0ther00", "gene sets")])
def test_bundles_of_different_versions_on_one_board_are_refused(at, bundles, field, value, what):
    other = _by_method(at, "lab-d", ("ridge",))
    _rewrite(other, lambda rec: dataclasses.replace(rec, cell=dataclasses.replace(rec.cell, **{field: value})))
    line = _one_line_error(_report("--from", "b", "--from", "lab-d"), "--from b", "--from lab-d",
                           "(synthetic G=10)", what, value)
    assert "report them apart" in line


def test_a_different_panel_on_one_board_is_refused(at, bundles):
    _by_method(at, "lab-a", ("mean", "bundle-exploding"))
    other = _by_method(at, "lab-e", ("ridge",))
    _rewrite(other, lambda rec: dataclasses.replace(rec, panel=dataclasses.replace(rec.panel, panel_id="elsewhere")))
    _one_line_error(_report("--from", "lab-a", "--from", "lab-e"), "(synthetic G=10)", "panel of slide fold", "elsewhere")


def test_rows_from_other_hardware_are_marked_in_every_format(at, bundles):
    _by_method(at, "lab-a", ("mean", "bundle-exploding"))
    other = _by_method(at, "lab-f", ("ridge",))
    cpu = "Other Vendor CPU 9000"
    folds = iter(range(1))  # one ridge cell of two moves: the board's most common hardware stays this machine's

    def elsewhere(rec):
        if next(folds, None) is None:
            return rec
        return dataclasses.replace(rec, provenance={**rec.provenance, "cpu_model": cpu})

    _rewrite(other, elsewhere)
    md = _ok("--from", "lab-a", "--from", "lab-f", "--format", "markdown")
    assert "| ridge (tiny) [hw2] |" in md and "| mean (tiny) |" in md
    assert f"- [hw2]: computed on cpu, {cpu}, not the hardware" in md
    assert "cells computed on 2 kinds of hardware: most on cpu, " in md and f"[hw2] cpu, {cpu}: 1" in md
    rows = {r["method"]: r for r in _csv_rows(_ok("--from", "lab-a", "--from", "lab-f", "--format", "csv"))}
    assert rows["ridge"]["other_hardware"] == f"cpu, {cpu}" and rows["mean"]["other_hardware"] == ""
    doc = json.loads(_ok("--from", "lab-a", "--from", "lab-f", "--format", "json"))
    assert doc["hardware_marks"] == {"[hw2]": f"cpu, {cpu}"}
    ridge = next(r for r in doc["boards"][0]["rows"] if r["method"] == "ridge")
    assert ridge["other_hardware"] == [f"cpu, {cpu}"]
    table = _ok("--from", "lab-a", "--from", "lab-f", "--format", "table")
    assert "ridge† [hw2]" in table
    # one machine: no mark anywhere (the single-bundle reports above equal the results dir's)
    assert "[hw" not in _ok("--from", "lab-a", "--format", "markdown")


def _csv_rows(text: str) -> list[dict]:
    import csv

    return list(csv.DictReader(io.StringIO(text)))
