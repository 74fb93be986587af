import numpy as np
import pytest
import scipy.sparse as sp

from flag_bench.catalog import PANELS
from flag_bench.datasets.panels import HMHVG, HVG, FilePanel, make_selector, selector_key
from flag_bench.errors import UserError
from flag_bench.spec import PanelSpec


def _counts(seed, n=120, g=300):
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(0.0, 1.5, size=g)
    disp = rng.uniform(0.1, 2.0, size=g)
    lam = rng.gamma(1 / disp, mu * disp, size=(n, g))
    return sp.csr_matrix(rng.poisson(lam).astype(np.int32))


GENES = [f"G{i}" for i in range(297)] + ["MT-CO1", "RPS3", "RPL5"]


@pytest.mark.parametrize("G", [1, 10, 50, 200])
def test_hmhvg_exact_size_and_matches_brute_force_k_search(G):
    train = [_counts(1), _counts(2)]
    panel = HMHVG().fit(train, GENES, G, train_slides=("a", "b"), dataset_version="v")
    assert panel.size == G and len(set(panel.genes)) == G
    assert not any(g.startswith(("MT-", "RPS", "RPL")) for g in panel.genes)
    # brute force over K on the same candidates: S(K) = top-K mean ∩ top-K std
    pooled = sp.vstack(train).toarray().astype(float)
    cand = [i for i, g in enumerate(GENES) if g in set(GENES[:297])]
    mean, std = pooled[:, cand].mean(0), pooled[:, cand].std(0, ddof=1)
    for K in range(G, len(cand) + 1):
        s = set(np.argsort(-mean, kind="stable")[:K]) & set(np.argsort(-std, kind="stable")[:K])
        if len(s) >= G:
            break
    assert panel.stats["k_search"] == K
    chosen = {cand.index(i) for i in panel.index}
    assert chosen <= s and len(s) - len(chosen) == len(s) - G


def test_panel_ignores_test_slides_and_ids_change_with_train():
    train = [_counts(1), _counts(2)]
    p1 = HMHVG().fit(train, GENES, 30, train_slides=("a", "b"), dataset_version="v")
    p2 = HMHVG().fit(train, GENES, 30, train_slides=("a", "b"), dataset_version="v")
    assert p1.genes == p2.genes and p1.panel_id == p2.panel_id
    p3 = HMHVG().fit([_counts(3), _counts(2)], GENES, 30, train_slides=("c", "b"), dataset_version="v")
    assert p3.panel_id != p1.panel_id


def test_sizes_out_of_range_are_user_errors():
    with pytest.raises(UserError, match="at least one gene"):
        HMHVG().fit([_counts(1)], GENES, 0, train_slides=("a",), dataset_version="v")
    with pytest.raises(UserError, match="candidate genes"):
        HMHVG().fit([_counts(1)], GENES, 5000, train_slides=("a",), dataset_version="v")


def test_hvg_and_file_panels(tmp_path):
    p = HVG().fit([_counts(1)], GENES, 25, train_slides=("a",), dataset_version="v")
    assert p.size == 25
    f = tmp_path / "genes.txt"
    f.write_text("# my panel\nG5\nG1\nG9\n")
    fp = FilePanel(str(f)).fit([_counts(1)], GENES, 2, train_slides=("a",), dataset_version="v")
    assert fp.genes == ("G5", "G1")
    f.write_text("G5\nNOPE\n")
    with pytest.raises(UserError, match="NOPE"):
        FilePanel(str(f)).fit([_counts(1)], GENES, 2, train_slides=("a",), dataset_version="v")
    with pytest.raises(UserError, match="no such file"):
        make_selector(PanelSpec.parse(f"file:{tmp_path / 'missing.txt'}"), FilePanel)
    # the caller resolves the class; an unknown name fails there, with a suggestion
    with pytest.raises(UserError, match="did you mean 'hmhvg'"):
        PANELS.check("hmhv")


def test_make_selector_takes_the_resolved_class(tmp_path):
    f = tmp_path / "genes.txt"
    f.write_text("G1\nG2\n")
    sel = make_selector(PanelSpec.parse(f"file:{f}"), PANELS.get("file"))
    assert isinstance(sel, FilePanel) and sel.params["path"] == str(f)
    assert isinstance(make_selector(PanelSpec("hmhvg"), HMHVG), HMHVG)
    # memo keys: the same selector with the same parameters, the same key
    assert selector_key(HMHVG()) == selector_key(make_selector(PanelSpec("hmhvg"), HMHVG))
    assert selector_key(HMHVG(n_top_hvg=100)) != selector_key(HMHVG())
