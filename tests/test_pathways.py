"""Pathway scores (issue 25): ``metrics/pathways.py`` against a hand computation on the shipped
gene sets, the registry's hash pinning, ``--gene-sets`` checked at plan time, and a grid that
records ``pathway_pcc`` per slide and per cell while a grid without gene sets keeps its cell ids."""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np
import pytest

from flag_bench.catalog import GENE_SETS
from flag_bench.config import RunConfig
from flag_bench.driver import Driver
from flag_bench.errors import UserError
from flag_bench.gene_sets import (GeneSetEntry, expected_sha256_from_protocol, load_registered, read_resource,
                                  resolve_gene_sets, sha256_hex, spec_from_protocol)
from flag_bench.grid import Cell
from flag_bench.hashing import short_hash
from flag_bench.metrics.pathways import MIN_GENES, pathway_pcc
from flag_bench.store import ResultsStore

SHIPPED = "her2-breast"


# -- the hand computation: plain loops, nothing from metrics/ ----------------------------------

def _mean(v):
    return sum(v) / len(v)


def _z_column(col):
    """z-scores of one gene over spots, ddof 0; a gene constant on the slide is 0."""
    if max(col) - min(col) == 0:
        return [0.0] * len(col)
    m = _mean(col)
    sd = math.sqrt(sum((x - m) ** 2 for x in col) / len(col))
    return [(x - m) / sd for x in col]


def _pearson(a, b):
    """NaN when a is constant, 0 when only b is."""
    if max(a) - min(a) == 0:
        return math.nan
    if max(b) - min(b) == 0:
        return 0.0
    ma, mb = _mean(a), _mean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def _hand(truth, pred, genes, sets):
    """-> (pathway_pcc, {set: r}) for the sets with >= MIN_GENES panel genes."""
    n, g = truth.shape
    zt = [_z_column([float(truth[i, j]) for i in range(n)]) for j in range(g)]
    zp = [_z_column([float(pred[i, j]) for i in range(n)]) for j in range(g)]
    rs = {}
    for name, members in sets:
        cols = [j for j, gene in enumerate(genes) if gene in members]
        if len(cols) < MIN_GENES:
            continue
        st = [_mean([zt[j][i] for j in cols]) for i in range(n)]
        sp = [_mean([zp[j][i] for j in cols]) for i in range(n)]
        rs[name] = _pearson(st, sp)
    kept = [r for r in rs.values() if not math.isnan(r)]
    return (_mean(kept) if kept else math.nan), rs


@pytest.fixture(scope="module")
def shipped():
    return load_registered(SHIPPED)


def _panel(shipped, n_spots=7, seed=0):
    """A panel with MIN_GENES + 1 genes of the first set, MIN_GENES of the second, MIN_GENES - 2 of a
    third (never scored) and two genes of no set; truth and an unrelated-but-correlated prediction."""
    (a, ga), (b, gb), (c, gc) = shipped.sets[:3]
    taken = set()
    genes = []
    for members, k in ((ga, MIN_GENES + 1), (gb, MIN_GENES), (gc, MIN_GENES - 2)):
        pick = [x for x in members if x not in taken][:k]
        assert len(pick) == k
        taken.update(pick)
        genes += pick
    genes += ["NO_SET_GENE_1", "NO_SET_GENE_2"]
    rng = np.random.default_rng(seed)
    truth = np.log1p(rng.poisson(3.0, size=(n_spots, len(genes)))).astype(np.float64)
    pred = 0.6 * truth + rng.normal(scale=0.5, size=truth.shape)
    return genes, truth, pred, (a, b, c)


def test_pathway_pcc_matches_a_hand_computation_on_the_shipped_sets(shipped):
    genes, truth, pred, (a, b, c) = _panel(shipped)
    # a gene constant in the truth, another constant in the prediction: both are z = 0 on that side
    truth[:, 0] = truth[0, 0]
    pred[:, MIN_GENES + 1] = pred[0, MIN_GENES + 1]
    s = pathway_pcc(truth, pred, genes, shipped.sets)
    want, rs = _hand(truth, pred, genes, shipped.sets)
    assert set(rs) == {a, b} and c not in s.notes["r_by_set"]  # < MIN_GENES panel genes: left out
    assert np.allclose(s.values["pathway_pcc"], want, rtol=0, atol=1e-12)
    for name, r in rs.items():
        assert np.allclose(s.notes["r_by_set"][name], r, rtol=0, atol=1e-12)
    assert (s.notes["n_sets_eligible"], s.notes["n_sets_scored"], s.notes["n_sets_const_true"]) == (2, 2, 0)
    assert all(math.isfinite(r) for r in rs.values())


def test_a_set_whose_truth_score_is_constant_is_left_out(shipped):
    genes, truth, pred, (a, b, _) = _panel(shipped, seed=1)
    first = [j for j, g in enumerate(genes) if g in dict(shipped.sets)[a]]
    truth[:, first] = truth[0, first]  # every panel gene of set a constant: its truth score is constant
    s = pathway_pcc(truth, pred, genes, shipped.sets)
    want, rs = _hand(truth, pred, genes, shipped.sets)
    assert math.isnan(rs[a]) and math.isnan(s.notes["r_by_set"][a]) and math.isfinite(rs[b])
    assert np.allclose(s.values["pathway_pcc"], rs[b], rtol=0, atol=1e-12)
    assert np.allclose(s.values["pathway_pcc"], want, rtol=0, atol=1e-12)
    assert (s.notes["n_sets_scored"], s.notes["n_sets_const_true"]) == (1, 1)


def test_no_set_scored_is_nan_with_a_reason(shipped):
    genes, truth, pred, _ = _panel(shipped)
    few = genes[: MIN_GENES - 1]
    s = pathway_pcc(truth[:, : len(few)], pred[:, : len(few)], few, shipped.sets)
    assert math.isnan(s.values["pathway_pcc"]) and s.notes["n_sets_scored"] == 0
    assert str(MIN_GENES) in s.notes["pathway_pcc_reason"]


# -- the registry: entries pinned by content hash --------------------------------------------

def test_shipped_sets_are_pinned_and_use_the_dataset_gene_symbols(shipped):
    from flag_bench.datasets.her2st_mini import load

    entry = GENE_SETS.get(SHIPPED)
    assert isinstance(entry, GeneSetEntry)
    data = read_resource(entry.resource, SHIPPED)
    assert shipped.sha256 == sha256_hex(data) == entry.sha256
    assert shipped.identity == f"{SHIPPED}@{entry.sha256}"
    pool = set(load().genes)
    missing = sorted({g for _, members in shipped.sets for g in members} - pool)
    assert not missing, f"genes of {SHIPPED} not in her2st-mini's pool: {missing}"
    assert len(shipped.eligible(sorted(pool), MIN_GENES)) == len(shipped.sets)


@pytest.fixture
def altered_copy(tmp_path, monkeypatch):
    """A package on sys.path holding a copy of the shipped GMT, registered with the copy's pin."""
    pkg = tmp_path / "h5_alt_sets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    data = read_resource(GENE_SETS.get(SHIPPED).resource, SHIPPED)
    (pkg / "sets.gmt").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    GENE_SETS.register("alt-sets", GeneSetEntry("h5_alt_sets:sets.gmt", sha256_hex(data)))
    yield pkg / "sets.gmt"
    GENE_SETS.unregister("alt-sets")
    sys.modules.pop("h5_alt_sets", None)


def test_a_registered_file_altered_after_pinning_is_refused(altered_copy, shipped):
    assert load_registered("alt-sets").sets == shipped.sets  # the pinned copy loads
    text = altered_copy.read_text()
    altered_copy.write_text(text.replace("\tERBB2\t", "\tERBB2\tEGFR\t", 1))
    with pytest.raises(UserError, match=r"alt-sets.*differs from the pinned") as err:
        resolve_gene_sets("alt-sets")
    assert "\n" not in str(err.value)


def test_unknown_name_suggests_the_registered_one():
    with pytest.raises(UserError, match=f"did you mean '{SHIPPED}'"):
        resolve_gene_sets(SHIPPED[:-1])


# -- bad GMT input: one line naming the file and the line ---------------------------------------

@pytest.mark.parametrize("lines,line_no,fragment", [
    (["A\tdesc\tG1\tG2", "", "B desc G3 G4"], 3, "tab-separated"),
    (["A\tdesc\tG1", "B\tdesc"], 2, "tab-separated"),
    (["A\tdesc\tG1", "A\tdesc\tG2"], 2, "also on line 1"),
    (["\tdesc\tG1"], 1, "no name"),
])
def test_malformed_gmt_is_one_line_naming_file_and_line(tmp_path, lines, line_no, fragment):
    path = tmp_path / "bad.gmt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        resolve_gene_sets(f"file:{path}")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f"line {line_no}" in msg and fragment in msg


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        resolve_gene_sets(f"file:{tmp_path / 'absent.gmt'}")
    (tmp_path / "empty.gmt").write_text("\n\n")
    with pytest.raises(UserError, match="no gene set"):
        resolve_gene_sets(f"file:{tmp_path / 'empty.gmt'}")


# -- a tiny grid ---------------------------------------------------------------------------

N_GENES = 20  # the panel is every gene of the dataset, so the sets below are scored as written
SYN = f"synthetic:n_slides=3,spots_per_slide=40,n_genes={N_GENES},seed=3"


def _cfg(tmp_path, name, **kw):
    return RunConfig(datasets=(SYN,), methods=("mean", "ridge"), genes=(N_GENES,), folds=(0,),
                     encoder="color-stats", preset="tiny", device="cpu", results_dir=str(tmp_path / name), **kw)


def _gmt(tmp_path) -> tuple[str, list[list[str]]]:
    from flag_bench.datasets.synthetic import load

    genes = list(load(n_slides=3, spots_per_slide=40, n_genes=N_GENES, seed=3).genes)
    sets = [genes[:MIN_GENES + 1], genes[MIN_GENES + 1:2 * MIN_GENES + 1], genes[-(MIN_GENES - 1):]]
    path = tmp_path / "sets.gmt"
    path.write_text("".join(f"SET{i}\tunit test\t" + "\t".join(s) + "\n" for i, s in enumerate(sets)))
    return str(path), sets


def _board(results_dir) -> tuple[tuple[str, ...], str]:
    from flag_bench.leaderboard.model import build
    from flag_bench.leaderboard.render import render
    from flag_bench.leaderboard.results import load_results

    lb = build(load_results(results_dir, source="store").frame())
    return lb.columns, render(lb, "markdown")


OLD_CELL_FIELDS = ("dataset", "dataset_spec", "dataset_version", "n_genes", "panel", "panel_params", "method",
                   "preset", "config_hash", "split", "fold", "fold_train", "fold_val", "fold_test", "seed",
                   "target_transform", "encoder", "patch", "protocol_version")


def _old_cell_id(cell: Cell) -> str:
    """The id as the Cell of before gene sets computed it: its 19 fields, a file panel by content."""
    d = {f: dataclasses.asdict(cell)[f] for f in OLD_CELL_FIELDS}
    if cell.panel.startswith("file:"):
        d["panel"] = "file"
    return short_hash(d, n=16)


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pathways")
    gmt, sets = _gmt(tmp)
    plain, with_sets = _cfg(tmp, "plain"), _cfg(tmp, "sets", gene_sets=f"file:{gmt}")
    for c in (plain, with_sets):
        assert Driver(c).run().exit_code == 0
    return (list(ResultsStore(plain.results_dir).records()), list(ResultsStore(with_sets.results_dir).records()),
            plain.results_dir, with_sets.results_dir, gmt, sets)


def test_grid_with_gene_sets_records_pathway_pcc_per_slide_and_per_cell(grids):
    _, recs, _, results_dir, gmt, sets = grids
    found = resolve_gene_sets(f"file:{gmt}")
    assert recs and all(r.ok for r in recs)
    for r in recs:
        slides = list(r.scores_per_slide)
        per_slide = [r.scores_per_slide[s]["pathway_pcc"] for s in slides]
        assert all(math.isfinite(v) for v in per_slide)
        assert r.scores["pathway_pcc"] == pytest.approx(float(np.mean(per_slide)), abs=1e-12)
        eligible = sum(len(s) >= MIN_GENES for s in sets)
        assert r.notes["n_pathways_scored"] == {s: eligible for s in slides}
        assert r.cell.gene_sets == found.identity and "/" not in r.cell.gene_sets  # never a path
        card = r.protocol["gene_sets"]
        assert (card["sha256"], card["n_sets"], card["min_genes"]) == (found.sha256, len(sets), MIN_GENES)
        # what `reproduce` reads back: a --gene-sets value that reads the same content
        again = resolve_gene_sets(spec_from_protocol(r.protocol))
        assert again.identity == r.cell.gene_sets and expected_sha256_from_protocol(r.protocol) == again.sha256
    mean = [r for r in recs if r.cell.method == "mean"]
    assert mean and all(r.scores["pathway_pcc"] == 0 for r in mean)  # a constant prediction scores 0
    columns, text = _board(results_dir)
    assert "pathway_pcc" in columns and "PathPCC" in text and found.sha256[:12] in text


def test_grid_without_gene_sets_keeps_its_cell_ids_and_columns(grids):
    plain, with_sets, results_dir, *_ = grids
    assert plain and all(r.cell.gene_sets == "" and "pathway_pcc" not in r.scores for r in plain)
    assert all("gene_sets" not in r.protocol for r in plain)
    assert all(r.cell_id == _old_cell_id(r.cell) for r in plain)
    # the gene sets are part of what a cell scores: the same grid with them is other cells
    assert {r.cell_id for r in plain}.isdisjoint({r.cell_id for r in with_sets})
    assert {dataclasses.replace(r.cell, gene_sets="").cell_id for r in with_sets} == {r.cell_id for r in plain}
    columns, text = _board(results_dir)
    assert "pathway_pcc" not in columns and "PathPCC" not in text and "pathways" not in text


def test_gene_sets_are_checked_at_plan_time(tmp_path):
    bad = tmp_path / "bad.gmt"
    bad.write_text("A\tdesc\tG1\nB desc G2\n")
    with pytest.raises(UserError, match=r"bad\.gmt line 2"):
        Driver(_cfg(tmp_path, "r1", gene_sets=f"file:{bad}")).run()
    other = tmp_path / "other.gmt"
    other.write_text("MOUSE\tno symbol of the dataset\t" + "\t".join(f"Gm{i}" for i in range(MIN_GENES)) + "\n")
    with pytest.raises(UserError, match="use gene symbols as the dataset names them"):
        Driver(_cfg(tmp_path, "r2", gene_sets=f"file:{other}")).run()
    assert not (tmp_path / "r1" / "cells").exists() or not any((tmp_path / "r1" / "cells").iterdir())


def test_the_html_protocol_card_names_the_gene_sets(grids):
    from flag_bench.leaderboard.content import cards
    from flag_bench.leaderboard.results import load_results

    _, _, plain_dir, sets_dir, gmt, _ = grids
    found = resolve_gene_sets(f"file:{gmt}")
    with_sets = load_results(sets_dir, source="store")
    fields = dict(cards(with_sets, with_sets.frame())[0].fields)
    assert fields["gene sets (PathPCC)"].startswith(f"{found.name}@{found.sha256[:12]}")
    plain = load_results(plain_dir, source="store")
    assert "gene sets (PathPCC)" not in dict(cards(plain, plain.frame())[0].fields)
