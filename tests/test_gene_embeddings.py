"""Gene-embedding providers (FLAG alignment targets, flag-spec §3.5)."""

from __future__ import annotations

import builtins
import gzip
import io
import warnings

import numpy as np
import pytest

from flag_bench.errors import UserError
from flag_bench.methods.flag import gene_tables
from flag_bench.methods.flag.gene_embeddings import PROVIDERS, get_provider, normalised_ranks
from flag_bench.methods.flag.gene_tables import read_gene_table
from flag_bench.methods.flag.geneformer import GeneformerProvider, geneformer_v1_dictionaries

# ---------------------------------------------------------------------------------- geneformer
D = geneformer_v1_dictionaries()
SYMBOLS = ["ERBB2", "GAPDH", "KRT19", "ESR1", "ACTB"]
IDS = [D["names"][s] for s in SYMBOLS]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(D["token"]), hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                  pad_token_id=0)
    path = tmp_path_factory.mktemp("tiny_geneformer")
    transformers.BertForMaskedLM(cfg).save_pretrained(path)
    return path


def test_shipped_dictionaries():
    assert D["token"]["<pad>"] == 0 and D["token"]["<mask>"] == 1
    assert len(D["token"]) == 25426 and len(D["median"]) == 25424
    assert all(i in D["token"] for i in D["names"].values())
    assert D["meta"]["sha256"]["token_dictionary"]


def test_geneformer_tokenisation_order(tiny_bert):
    p = GeneformerProvider(model_dir=tiny_bert)
    med = np.array([D["median"][i] for i in IDS])
    counts = np.array([[5, 40, 0, 1, 3], [0, 0, 2, 0, 0]])
    tok, col = p.tokenize(counts, SYMBOLS, IDS)
    # expected: non-zero genes by count / n_counts * 1e4 / median, descending (n_counts cancels)
    nz = np.flatnonzero(counts[0])
    expected = nz[np.argsort(-(counts[0, nz] / med[nz]), kind="stable")]
    assert col[0].tolist() == expected.tolist()
    assert tok[0].tolist() == [D["token"][IDS[j]] for j in expected]
    assert col[1].tolist() == [2]
    # the order is by normalised value, not by raw count, whenever the medians disagree
    by_count = nz[np.argsort(-counts[0, nz], kind="stable")]
    if not np.array_equal(by_count, expected):
        assert col[0].tolist() != by_count.tolist()


def test_geneformer_gene_ids_and_symbol_fallback(tiny_bert):
    p = GeneformerProvider(model_dir=tiny_bert)
    genes = ("ERBB2", "GAPDH", "NOT_A_GENE")
    n, missing = p.coverage(genes, (IDS[0] + ".7", "", ""))  # versioned id; symbol fallback; unknown
    assert n == 2 and missing == ["NOT_A_GENE"]


def test_geneformer_embed_round_trip(tiny_bert):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    genes = tuple(SYMBOLS) + ("NOT_A_GENE",)
    ids = tuple(IDS) + ("",)
    counts = np.array([[5, 40, 0, 1, 3, 9], [0, 0, 2, 0, 0, 4], [0, 0, 0, 0, 0, 7]])
    p = GeneformerProvider(model_dir=tiny_bert, batch_size=2)
    with pytest.warns(UserWarning, match=r"1 of 6 genes"):
        emb, mask = p.embed(counts, genes, ids)
    assert emb.shape == (3, 6, 16) and emb.dtype == np.float32 and mask.dtype == bool
    assert mask.tolist() == ((counts > 0) & np.array([True] * 5 + [False])).tolist()
    assert np.all(emb[~mask] == 0) and np.all(np.linalg.norm(emb[mask], axis=-1) > 0)
    assert p.describe()["n_missing_genes"] == 1 and p.dim == 16
    # warned once only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb2, mask2 = p.embed(counts, genes, ids)
    np.testing.assert_array_equal(emb, emb2)
    # independent check: run the checkpoint on the spot-0 sequence directly
    model = transformers.BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval()
    tok, col = p.tokenize(counts[:1], genes, ids)
    with torch.no_grad():
        h = model(input_ids=torch.as_tensor(tok[0])[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(emb[0, col[0]], h, rtol=1e-5, atol=1e-5)
    # a fresh provider gives identical numbers
    with pytest.warns(UserWarning, match="1 of 6"):
        np.testing.assert_array_equal(GeneformerProvider(model_dir=tiny_bert).embed(counts, genes, ids)[0], emb)


def test_geneformer_truncates_to_max_len(tiny_bert):
    p = GeneformerProvider(model_dir=tiny_bert, max_len=2)
    counts = np.array([[5, 40, 3, 1, 3]])
    tok, col = p.tokenize(counts, SYMBOLS, IDS)
    assert len(tok[0]) == 2
    _, mask = p.embed(counts, SYMBOLS, IDS)
    assert mask.sum() == 2 and mask[0, col[0]].all()


def test_geneformer_model_dir_errors(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(UserError, match="no_such_dir") as e:
        get_provider("geneformer", model_dir=str(missing))
    assert "\n" not in str(e.value) and "ctheodoris/Geneformer" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="empty") as e:
        get_provider("geneformer", model_dir=empty)
    assert "\n" not in str(e.value) and "model_dir" in str(e.value)
    with pytest.raises(UserError, match="model_dir"):
        get_provider("geneformer")


# -------------------------------------------------------------------------------------- table
def write(path, text):
    path.write_text(text)
    return path


def test_table_provider_tsv_csv_npz(tmp_path):
    tsv = write(tmp_path / "t.tsv", "gene\td0\td1\nA\t1\t2\nB\t3\t4\nENSG1\t5\t6\n")
    csv = write(tmp_path / "t.csv", "x,symbol\n1,A\n3,B\n")
    npz = tmp_path / "t.npz"
    np.savez(npz, genes=np.array(["A", "B"]), emb=np.array([[1.0, 2.0], [3.0, 4.0]]))
    gz = tmp_path / "t.tsv.gz"
    gz.write_bytes(gzip.compress(tsv.read_bytes()))
    assert read_gene_table(csv)[0] == ["A", "B"] and read_gene_table(csv)[1].tolist() == [[1.0], [3.0]]
    assert read_gene_table(npz)[1].tolist() == read_gene_table(tsv)[1][:2].tolist()
    assert read_gene_table(gz)[1].tolist() == read_gene_table(tsv)[1].tolist()
    p = get_provider("table", path=str(tsv))
    counts = np.array([[1, 0, 2, 7], [0, 3, 0, 1]])
    with pytest.warns(UserWarning, match="1 of 4"):
        emb, mask = p.embed(counts, ("A", "B", "X", "Z"), ("", "", "ENSG1", ""))  # X matched by id
    assert p.dim == 2 and emb.shape == (2, 4, 2)
    assert mask.tolist() == [[True, False, True, False], [False, True, False, False]]
    assert emb[0, 0].tolist() == [1, 2] and emb[0, 2].tolist() == [5, 6] and emb[1, 1].tolist() == [3, 4]
    assert np.all(emb[~mask] == 0)
    d = p.describe()
    assert d["provider"] == "table" and str(tsv) in d["source"] and d["n_missing_genes"] == 1 and d["sha256"]


@pytest.mark.parametrize("text, problem", [
    ("name\td0\nA\t1\n", "missing gene column"),
    ("gene\td0\td1\nA\t1\t2\nB\t3\n", "ragged row at line 3"),
    ("gene\td0\nA\t1\nB\tabc\n", "non-numeric value 'abc'"),
    ("gene\td0\nA\tnan\n", "non-finite"),
    ("gene\td0\nA\t1\nB\t2\nA\t3\n", "duplicate genes \\['A'\\]"),
    ("gene\td0\n", "at least one gene row"),
])
def test_table_malformed(tmp_path, text, problem):
    path = write(tmp_path / "bad.tsv", text)
    with pytest.raises(UserError, match=problem) as e:
        get_provider("table", path=path)
    assert "bad.tsv" in str(e.value) and "\n" not in str(e.value)


def test_table_malformed_npz_and_missing(tmp_path):
    npz = tmp_path / "bad.npz"
    np.savez(npz, names=np.array(["A"]), emb=np.ones((1, 2)))
    with pytest.raises(UserError, match="'genes' and 'emb'"):
        get_provider("table", path=npz)
    np.savez(npz, genes=np.array(["A", "B"]), emb=np.ones((3, 2)))
    with pytest.raises(UserError, match="bad.npz"):
        get_provider("table", path=npz)
    with pytest.raises(UserError, match="nope.tsv"):
        get_provider("table", path=tmp_path / "nope.tsv")
    with pytest.raises(UserError, match="path"):
        get_provider("table")


# -------------------------------------------------------------------------------- her2st-expr
BREAST_GENES = [
    "ERBB2", "GRB7", "KRT19", "KRT18", "KRT8", "KRT7", "EPCAM", "CDH1", "ESR1", "PGR", "FOXA1", "GATA3", "XBP1",
    "TFF1", "TFF3", "MUC1", "SCGB2A2", "CD24", "KRT5", "KRT14", "KRT17", "GAPDH", "ACTB", "MKI67", "TOP2A",
    "CCND1", "MYC", "COL1A1", "COL1A2", "COL3A1", "FN1", "SPARC", "VIM", "ACTA2", "MGP", "PTPRC", "CD74",
    "CD68", "LYZ", "IGKC", "IGHG1", "HLA-DRA", "B2M", "S100A4", "POSTN", "DCN", "LUM", "FASN", "AR", "MIEN1",
]


def test_her2st_expr_loads_from_package_only(monkeypatch):
    real_open = io.open

    def guarded(file, *a, **k):
        if "/work/shared" in str(file):
            raise AssertionError(f"read outside the package: {file}")
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    gene_tables.her2st_expr_table.cache_clear()
    try:
        p = get_provider()  # the default
        n, missing = p.coverage(BREAST_GENES)
    finally:
        gene_tables.her2st_expr_table.cache_clear()
    assert p.name == "her2st-expr"
    assert n / len(BREAST_GENES) >= 0.95, missing
    d = p.describe()
    assert d["provider"] == "her2st-expr" and d["build_hash"]
    assert not any(s[0] in "BC" for s in d["sections"]) and {s[0] for s in d["sections"]} == set("ADEFGH")


def test_her2st_expr_embeddings():
    p = get_provider("her2st-expr")
    genes = ("ERBB2", "KRT19", "GAPDH", "COL1A1", "NOT_A_GENE")
    counts = np.array([[1000, 1, 0, 1, 5], [1, 50, 3, 80, 5], [0, 0, 0, 0, 1]])
    with pytest.warns(UserWarning, match="1 of 5"):
        emb, mask = p.embed(counts, genes)
    assert emb.shape == (3, 5, p.dim) and p.dim == 64 + 16 and emb.dtype == np.float32
    assert mask.tolist() == ((counts > 0) & np.array([1, 1, 1, 1, 0], bool)).tolist()
    assert np.all(emb[~mask] == 0)
    # the static part is the gene's table row (unit norm); the rank part depends on the spot
    np.testing.assert_allclose(np.linalg.norm(emb[0, 0, :64]), 1.0, atol=2e-3)
    np.testing.assert_array_equal(emb[0, 1, :64], emb[1, 1, :64])
    assert not np.allclose(emb[0, 0, 64:], emb[1, 0, 64:])
    np.testing.assert_allclose(np.linalg.norm(emb[mask][:, 64:], axis=-1), 0.5, rtol=1e-5)
    # deterministic, also across instances
    with pytest.warns(UserWarning):
        np.testing.assert_array_equal(get_provider("her2st-expr").embed(counts, genes)[0], emb)
    # co-expression structure: ERBB2 is closer to its amplicon neighbour GRB7 than to COL1A1
    e = p.embed(np.ones((1, 3), int), ("ERBB2", "GRB7", "COL1A1"))[0][0, :, :64]
    assert e[0] @ e[1] > e[0] @ e[2]
    static = get_provider("her2st-expr", rank_dim=0)
    assert static.dim == 64 and static.describe()["context"].startswith("sinusoidal")


def test_normalised_ranks():
    r = normalised_ranks(np.array([[3.0, 0.0, 1.0, 3.0, 2.0], [0.0, 0.0, 5.0, 0.0, 0.0]]))
    np.testing.assert_allclose(r[0], [1 / 6, np.nan, 1.0, 1 / 6, 2 / 3])
    assert r[1, 2] == 0.0 and np.isnan(r[1, [0, 1, 3, 4]]).all()


def test_get_provider_errors():
    with pytest.raises(UserError, match="unknown gene embedding provider 'nope'"):
        get_provider("nope")
    with pytest.raises(UserError, match="bad options"):
        get_provider("her2st-expr", dimension=3)
    with pytest.raises(UserError, match="rank_dim"):
        get_provider("her2st-expr", rank_dim=3)


def test_providers_are_a_registry_and_a_provider_type_error_is_not_an_option_error():
    assert {"her2st-expr", "geneformer", "table"} <= set(PROVIDERS.names())

    class Broken(gene_tables.Her2stExprProvider):
        def __init__(self, rank_dim: int = 16):
            raise TypeError("unexpected keyword inside the provider")  # a bug, not a bad option

    PROVIDERS.register("broken-test", Broken)
    try:
        with pytest.raises(TypeError, match="inside the provider"):
            get_provider("broken-test", rank_dim=8)
        with pytest.raises(UserError, match="bad options"):
            get_provider("broken-test", nope=1)
    finally:
        PROVIDERS.unregister("broken-test")
