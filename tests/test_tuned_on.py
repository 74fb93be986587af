"""Tuning hygiene: every preset of every registered method says what it was chosen on, and a preset
chosen by its scores on a dataset's benchmark test slides is flagged on that dataset's board in
every report format (its scores there are optimistic).

Several `small` presets were picked by comparing scores on her2st-mini's test slides (flag on C2,
C3 and C6; stem and histogene on C2; bleep and triplex on C6): before the cards said so, nothing
on a leaderboard told a reader.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import pytest
from typer.testing import CliRunner

from flag_bench.catalog import METHODS, method_card
from flag_bench.cli import app
from flag_bench.leaderboard.flags import all_flags, dataset_flags, tuned_on_test
from flag_bench.leaderboard.model import build
from flag_bench.leaderboard.render import render
from flag_bench.leaderboard.results import results_frame
from flag_bench.methods.base import MethodCard, Tuning
from test_results_api import make_record

# her2st-mini's benchmark test slides: leave-one-slide-out over patient C, and C -> B4
HER2ST_MINI_TEST = {"C2", "C3", "C4", "C5", "C6", "B4"}
FLAG_FAMILY = ("flag", "flag-paper", "flag-joint", "flag-node", "flag-no-gfm", "flag-no-graph", "flag-regression")


def _usable(name: str) -> bool:
    return not METHODS.broken(name)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if _usable(n)])
def test_every_registered_method_says_what_each_preset_was_tuned_on(name):
    cls = METHODS.get(name)
    card = cls.card
    assert method_card(name).tuned_on == card.tuned_on  # the torch-free card is the class's card
    for preset in cls.presets:
        t = card.tuning(preset)
        assert t is not None, f"{name}: no Tuning for preset '{preset}' (MethodCard.tuned_on)"
        assert t.on.strip() and t.metric.strip(), (name, preset)
        for slide in t.test_slides:
            dataset, _, sid = slide.partition(":")
            if dataset == "her2st-mini":
                assert sid in HER2ST_MINI_TEST, (name, preset, slide)
    assert {t.preset for t in card.tuned_on} <= set(cls.presets), f"{name}: a Tuning for a preset it lacks"


def test_what_the_small_presets_were_chosen_on():
    """The honest record, from the presets' own comments and the git log (see each card)."""
    want = {**{m: ("C2", "C3", "C6") for m in FLAG_FAMILY}, "stem": ("C2",), "histogene": ("C2",),
            "bleep": ("C6",), "triplex": ("C6",)}
    for name in METHODS.names():
        if METHODS.origin(name) != "built-in":
            continue
        card = method_card(name)
        assert tuned_on_test(name, ("small",), "her2st-mini") == want.get(name, ()), name
        for preset in ("tiny", "paper"):  # nobody here looked at test scores for these
            assert card.tuning(preset).test_slides == (), (name, preset)
        assert card.tuning("tiny").on.startswith(("not tuned", "no hyper-parameters")), name
    assert tuned_on_test("flag", ("small",), "synthetic") == ()  # another dataset's slides
    assert tuned_on_test("not-a-method", ("small",), "her2st-mini") == ()  # an unknown plugin: nothing


def test_tuning_entries_are_checked_and_recorded():
    with pytest.raises(ValueError, match="tuned_on must hold Tuning entries"):
        MethodCard(name="x", description="x", tuned_on=("small",))
    with pytest.raises(ValueError, match="more than one entry for preset 'small'"):
        MethodCard(name="x", description="x", tuned_on=(Tuning("small", "a", "b"), Tuning("small", "c", "d")))
    with pytest.raises(ValueError, match="must be a tuple of 'dataset:slide' names, got the string"):
        Tuning("small", "a", "b", "her2st-mini:C2")
    with pytest.raises(ValueError, match="must read 'dataset:slide'"):
        Tuning("small", "a", "b", ("C2",))
    card = method_card("stem")
    d = json.loads(json.dumps(card.to_dict()))  # recorded with every cell
    small = next(t for t in d["tuned_on"] if t["preset"] == "small")
    assert small["test_slides"] == ["her2st-mini:C2"] and "C2" in small["on"] and small["metric"]
    assert [t["preset"] for t in d["tuned_on"]] == [t.preset for t in card.tuned_on]


def _on(rec, dataset: str):
    return dataclasses.replace(rec, cell=dataclasses.replace(rec.cell, dataset=dataset))


class _Res:
    """What dataset_flags reads from a Results: nothing recorded beyond the frame."""

    def panel_stats(self, cell_id):
        return {}


def _frame():
    recs = []
    for fold in (0, 1):
        for method, preset in (("flag", "small"), ("stem", "small"), ("mean", "small"), ("flag", "tiny"),
                               ("knn", "small")):
            recs.append(_on(make_record(method, preset, {"p": preset}, 5, fold), "her2st-mini"))
        recs.append(make_record("flag", "small", {"p": "small"}, 5, fold))  # dataset "synthetic"
    return results_frame(r.to_row() for r in recs)


FLAG_TEXT = "presets tuned on this dataset's test slides: flag small (C2, C3, C6), stem small (C2)"


def test_rows_tuned_on_the_boards_test_slides_are_flagged_in_every_text_format():
    frame = _frame()
    flags = all_flags(_Res(), frame)
    (line,) = [f for f in flags["her2st-mini"] if f.startswith("presets tuned")]
    assert line.startswith(FLAG_TEXT + ": their scores here are optimistic") and "tuned_on" in line
    assert "mean" not in line and "tiny" not in line and "knn" not in line
    assert not any("presets tuned" in f for f in flags.get("synthetic", ()))  # flag small, other data
    lb = build(frame, flags=flags)
    table = " ".join(render(lb, "table", width=80).split())  # the warning wraps at 80 columns
    assert "warning: " + FLAG_TEXT in table
    assert all(len(ln) <= 80 for ln in render(lb, "table", width=80).splitlines())
    assert f"**warning**: {FLAG_TEXT}" in render(lb, "markdown")
    rows = list(csv.DictReader(io.StringIO(render(lb, "csv"))))  # the table only: the row says it
    tuned = {(r["dataset"], r["label"]): r["tuned_on_test_slides"] for r in rows}
    assert tuned[("her2st-mini", "flag (small)")] == "C2 C3 C6" and tuned[("her2st-mini", "stem (small)")] == "C2"
    assert tuned[("her2st-mini", "flag (tiny)")] == "" and tuned[("her2st-mini", "mean (small)")] == ""
    assert tuned[("synthetic", "flag (small)")] == ""


def test_flag_reaches_the_terminal_markdown_and_html_reports(tmp_path):
    from report_demo import write_demo_store

    tuned, clean = tmp_path / "tuned", tmp_path / "clean"
    write_demo_store(tuned, methods=("mean", "flag"), genes=(20,), folds=2, side=6, dataset="her2st-mini",
                     preset="small")
    write_demo_store(clean, methods=("mean", "flag"), genes=(20,), folds=2, side=6, dataset="demo", preset="small")
    runner = CliRunner()
    for rd, expect in ((tuned, True), (clean, False)):
        for form in ("table", "markdown", "html"):
            args = ["report", "--results-dir", str(rd), "--format", form, "--source", "store"]
            out = tmp_path / f"{rd.name}.html"
            res = runner.invoke(app, args + (["--output", str(out)] if form == "html" else []),
                                env={"COLUMNS": "80"})
            assert res.exit_code == 0, res.output
            text = " ".join((out.read_text() if form == "html" else res.output).split())
            text = text.replace("&#x27;", "'")
            assert ("presets tuned on this dataset's test slides: flag small (C2, C3, C6)" in text) is expect, form
            if form == "table":
                assert all(len(ln) <= 80 for ln in res.output.splitlines())


def test_show_and_list_say_what_each_preset_was_tuned_on():
    runner = CliRunner()
    res = runner.invoke(app, ["show", "flag"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert all(len(ln) <= 80 for ln in out.splitlines())
    for preset in ("tiny", "small", "paper"):
        assert f"  {preset} tuned " in out, preset
    flat = " ".join(out.split())
    assert "test slides her2st-mini C2, C3, C6: their scores chose it" in flat
    assert "not tuned: a test-speed preset" in flat and "flag-spec §4" in flat
    res = runner.invoke(app, ["list", "methods"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert all(len(ln) <= 80 for ln in res.output.splitlines())
    lines = res.output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("presets chosen by their scores"))
    listed = [ln.strip() for ln in lines[start + 1:]]
    assert "flag small: her2st-mini C2, C3, C6" in listed and "bleep small: her2st-mini C6" in listed
    assert not any(ln.startswith(("mean ", "ridge ", "stflow ")) for ln in listed)


def test_dataset_flags_ignore_a_method_not_registered_here():
    rec = _on(make_record("some-plugin", "small", {}, 5, 0), "her2st-mini")
    frame = results_frame([rec.to_row()])
    assert not any("presets tuned" in f for f in dataset_flags(_Res(), frame))
