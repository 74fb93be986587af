"""A corpus of bad inputs for every reader (h5ad, hest, hest-bench, spaceranger, st): NaN / inf /
negative / non-integer / too-large counts, duplicate barcodes, duplicate genes, an empty slide, a
one-spot slide, names that are not UTF-8, coordinates that do not match the image; and 16-bit or
planar images.

Each case is either handled (read with the right numbers, a warning where something was renamed)
or refused through `flag-bench data check` in one line naming the file and the fix, exit 2, no
traceback. Slides are small synthetic lattices written by ``layouts`` in each published layout.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import layouts
from flag_bench.cli import app
from flag_bench.datasets.base import PatchSpec

runner = CliRunner()
READERS = ("h5ad", "hest", "hest-bench", "spaceranger", "st")
N_GENES = 25


def _slide(reader: str) -> dict:
    # Visium-like 100-um lattice; legacy ST arrays are 200 um apart (the st reader's default pitch)
    return layouts.synthetic_slide(4, 3, N_GENES, um_per_px=2.0, pitch_um=200.0 if reader == "st" else 100.0)


def _subset(slide: dict, idx) -> dict:
    idx = np.asarray(idx, dtype=np.int64)
    out = dict(slide)
    out.update(counts=slide["counts"][idx], barcodes=[slide["barcodes"][i] for i in idx], coords=slide["coords"][idx],
               array_xy=slide["array_xy"][idx])
    return out


def _write(reader: str, root: Path, slide: dict, *, x=None, barcodes=None, genes=None, coords=None,
           selected=None, spec_extra: str = "") -> tuple[str, str]:
    """Write one sample ``S`` in ``reader``'s layout; (spec, the file an error must name).
    ``x``/``barcodes``/``genes`` replace the counts, spot names and gene names; ``coords`` the
    spot centres the reader compares with the image (h5ad obsm['spatial'], Space Ranger and ST
    pixel positions; for hest/hest-bench the h5ad's, against the patches' own coords)."""
    root.mkdir(parents=True, exist_ok=True)
    x = slide["counts"] if x is None else x
    barcodes = slide["barcodes"] if barcodes is None else barcodes
    extra = f",{spec_extra}" if spec_extra else ""
    if reader == "h5ad":
        layouts.write_h5ad_arrays(root / "S.h5ad", x, barcodes, genes or slide["genes"],
                                  slide["coords"] if coords is None else coords)
        from PIL import Image

        Image.fromarray(slide["image"]).save(root / "S.png")
        return f"h5ad:path={root / 'S.h5ad'},image={root / 'S.png'},pixel_size=2{extra}", "S.h5ad"
    if reader in ("hest", "hest-bench"):
        layouts.write_hest_cut(root, "S", slide, x=x, barcodes=barcodes, genes=genes, st_coords=coords)
        if reader == "hest":
            return f"hest:root={root}{extra}", "st/S.h5ad"
        (root / "st").rename(root / "adata")
        (root / "splits").mkdir()
        for kind in ("train", "test"):
            (root / "splits" / f"{kind}_0.csv").write_text("sample_id,patches_path,expr_path\nS,patches/S.h5,adata/S.h5ad\n")
        return f"hest-bench:root={root}{extra}", "adata/S.h5ad"
    if reader == "spaceranger":
        dtype = np.int32 if np.issubdtype(np.asarray(x).dtype, np.integer) and np.asarray(x).max(initial=0) < 2**31 \
            else np.float64
        layouts.write_spaceranger_arrays(root / "outs", slide, x=x, barcodes=barcodes, genes=genes, data_dtype=dtype,
                                         positions=coords)
        return f"spaceranger:path={root / 'outs'},image=image.tif{extra}", "filtered_feature_bc_matrix.h5"
    assert reader == "st"
    table = None
    if genes is not None or x is not slide["counts"]:
        head = "\t" + "\t".join(genes or slide["genes"])
        rows = [f"{ax}x{ay}\t" + "\t".join(str(v) for v in row) for (ax, ay), row in zip(slide["array_xy"], np.asarray(x))]
        table = "\n".join([head, *rows]) + "\n"
    layouts.write_st_arrays(root, "S", slide, table_text=table, pixel_xy=coords, selected=selected)
    return f"st:root={root}{extra}", "S.tsv"


def _refused(spec: str, *fragments: str) -> str:
    res = runner.invoke(app, ["data", "check", spec])
    text = res.output.strip()
    assert res.exit_code == 2, text
    assert "Traceback" not in text and text.startswith("error:") and len(text.splitlines()) == 1, text
    for f in fragments:
        assert f in text, (f, text)
    return text


def _load(spec: str):
    from flag_bench.plan import load_dataset
    from flag_bench.spec import DatasetSpec

    return load_dataset(DatasetSpec.parse(spec))


@pytest.fixture(autouse=True)
def _fresh_memo():
    from flag_bench.plan import _DATASET_MEMO

    _DATASET_MEMO.clear()
    yield
    _DATASET_MEMO.clear()


# -- counts that are not raw counts --------------------------------------------------------------
def _bad_counts(slide: dict, value: float) -> np.ndarray:
    x = slide["counts"].astype(np.float64)
    x[1, 2] = value
    return x


@pytest.mark.parametrize("reader", READERS)
def test_nan_counts(reader, tmp_path):
    slide = _slide(reader)
    spec, where = _write(reader, tmp_path / "d", slide, x=_bad_counts(slide, np.nan))
    _refused(spec, where, "NaN", "raw count")


@pytest.mark.parametrize("reader", READERS)
def test_infinite_counts(reader, tmp_path):
    # used to become -2147483648 (a wrapping cast)
    slide = _slide(reader)
    spec, where = _write(reader, tmp_path / "d", slide, x=_bad_counts(slide, np.inf))
    _refused(spec, where, "infinite", "raw count")


@pytest.mark.parametrize("reader", READERS)
def test_counts_above_int32(reader, tmp_path):
    slide = _slide(reader)
    spec, where = _write(reader, tmp_path / "d", slide, x=_bad_counts(slide, 3e9))
    _refused(spec, where, "above 2147483647", "raw count")


@pytest.mark.parametrize("reader", READERS)
def test_negative_counts(reader, tmp_path):
    slide = _slide(reader)
    spec, where = _write(reader, tmp_path / "d", slide, x=_bad_counts(slide, -3))
    _refused(spec, where, "negative", "raw count")


@pytest.mark.parametrize("reader", READERS)
def test_log_normalised_counts(reader, tmp_path):
    slide = _slide(reader)
    c = slide["counts"].astype(np.float64)
    x = np.log1p(c / np.maximum(c.sum(axis=1, keepdims=True), 1) * 1e4)
    spec, where = _write(reader, tmp_path / "d", slide, x=x)
    text = _refused(spec, where, "non-integer values (log-normalised?)", "raw count")
    if reader in ("h5ad", "hest", "hest-bench"):
        assert "layers['counts']" in text, text


def test_h5ad_counts_from_a_layer_or_raw(tmp_path):
    """X log-normalised, raw counts in layers['counts'] and .raw: the error says where they are,
    and counts=counts / counts=raw read them."""
    slide = _slide("h5ad")
    c = slide["counts"]
    x = np.log1p(c / c.sum(axis=1, keepdims=True) * 1e4)
    path = layouts.write_h5ad_arrays(tmp_path / "S.h5ad", x, slide["barcodes"], slide["genes"], slide["coords"],
                                     layers={"counts": c}, raw_x=c * 2)
    base = f"h5ad:path={path},pixel_size=2"
    _refused(base, "S.h5ad X", "log-normalised", "counts=counts to read layers['counts']", "counts=raw")
    for source, want in (("counts", c), ("raw", c * 2)):
        ds = _load(f"{base},counts={source}")
        np.testing.assert_array_equal(ds.slides[0].counts.toarray(), want)
    _refused(f"{base},counts=spliced", "has no layers['spliced']", "counts=X")


# -- duplicate spot names ------------------------------------------------------------------------
@pytest.mark.parametrize("reader", READERS)
def test_duplicate_barcodes(reader, tmp_path):
    slide = _slide(reader)
    if reader == "st":  # the spot name is the array position
        slide = dict(slide, array_xy=slide["array_xy"].copy())
        slide["array_xy"][1] = slide["array_xy"][0]
        spec, where = _write(reader, tmp_path / "d", slide)
        _refused(spec, "alignment_table_S.tsv", "0x0 twice", "one row per spot")
        return
    bcs = list(slide["barcodes"])
    bcs[1] = bcs[0]
    spec, where = _write(reader, tmp_path / "d", slide, barcodes=bcs)
    _refused(spec, where, bcs[0], "twice" if reader == "spaceranger" else "duplicate obs names")


# -- duplicate gene names: made unique the AnnData way (warned), or summed on request -----------
@pytest.mark.parametrize("reader", READERS)
def test_duplicate_genes_made_unique_never_overwritten(reader, tmp_path):
    slide = _slide(reader)
    genes = list(slide["genes"])
    genes[3] = genes[1] = "DUP"
    spec, where = _write(reader, tmp_path / "d", slide, genes=genes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _load(spec)
    said = [str(w.message) for w in caught if "gene name" in str(w.message)]
    assert len(said) == 1 and "repeats 1 gene name(s) (e.g. DUP)" in said[0] and where.split("/")[-1] in said[0], said
    assert "\n" not in said[0] and "duplicate_genes=sum" in said[0]
    s = ds.slides[0]
    assert ds.genes.count("DUP") == 1 and "DUP-1" in ds.genes
    got = s.counts.toarray()
    want = slide["counts"]
    np.testing.assert_array_equal(got[:, ds.genes.index("DUP")], want[:, 1])  # the first copy's counts
    np.testing.assert_array_equal(got[:, ds.genes.index("DUP-1")], want[:, 3])
    np.testing.assert_array_equal(got[:, ds.genes.index("G2")], want[:, 2])

    _fresh = tmp_path / "sum"
    spec2, _ = _write(reader, _fresh, slide, genes=genes, spec_extra="duplicate_genes=sum")
    with pytest.warns(UserWarning, match="summed"):
        summed = _load(spec2)
    assert "DUP-1" not in summed.genes and len(summed.genes) == N_GENES - 1
    np.testing.assert_array_equal(summed.slides[0].counts.toarray()[:, summed.genes.index("DUP")],
                                  want[:, 1] + want[:, 3])


def test_duplicate_genes_bad_mode(tmp_path):
    spec, _ = _write("h5ad", tmp_path / "d", _slide("h5ad"), spec_extra="duplicate_genes=first")
    _refused(spec, "duplicate_genes='first'", "unique, sum")


# -- empty and one-spot slides -------------------------------------------------------------------
@pytest.mark.parametrize("reader", READERS)
def test_empty_slide(reader, tmp_path):
    slide = _slide(reader)
    if reader == "st":
        spec, _ = _write(reader, tmp_path / "d", slide, selected=[0] * len(slide["barcodes"]))
        _refused(spec, "alignment_table_S.tsv", "holds no spot", "drop section S")
        return
    spec, where = _write(reader, tmp_path / "d", _subset(slide, []))
    _refused(spec, where, "holds no spot", "drop")


@pytest.mark.parametrize("reader", READERS)
def test_one_spot_slide_is_read(reader, tmp_path):
    slide = _slide(reader)
    if reader == "st":
        spec, _ = _write(reader, tmp_path / "d", slide, selected=[0, 0, 0, 0, 0, 1] + [0] * 6)
        want = slide["counts"][[5]]
    else:
        spec, _ = _write(reader, tmp_path / "d", _subset(slide, [5]))
        want = slide["counts"][[5]]
    ds = _load(spec)
    s = ds.slides[0]
    assert s.n_spots == 1 and s.pixel_size_um == pytest.approx(2.0)
    np.testing.assert_array_equal(s.counts.toarray(), want)
    assert s.tiles(PatchSpec(56.0, 16)).shape == (1, 16, 16, 3)
    res = runner.invoke(app, ["data", "check", spec])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output


def test_one_spot_without_a_pixel_size(tmp_path):
    # the spacing of one spot says nothing: refused, naming the fix
    slide = _slide("h5ad")
    path = layouts.write_h5ad_arrays(tmp_path / "S.h5ad", slide["counts"][[5]], [slide["barcodes"][5]],
                                     slide["genes"], slide["coords"][[5]])
    _refused(f"h5ad:path={path}", "S.h5ad", "no pixel size", "pixel_size=")


# -- names that are not UTF-8 ----------------------------------------------------------------------
def _latin1_index(path: Path, group: str) -> None:
    with h5py.File(path, "r+") as f:
        names = [v if isinstance(v, bytes) else str(v).encode() for v in f[f"{group}/_index"][()]]
        names[2] = b"G\xe8ne"
        del f[f"{group}/_index"]
        f.create_dataset(f"{group}/_index", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8"))


@pytest.mark.parametrize("reader", READERS)
def test_names_not_utf8(reader, tmp_path):
    slide = _slide(reader)
    root = tmp_path / "d"
    if reader == "spaceranger":
        genes = list(slide["genes"])
        genes[2] = b"G\xe8ne"
        spec, where = _write(reader, root, slide, genes=genes)
        _refused(spec, where, "matrix/features/name row 2", "not UTF-8")
    elif reader == "st":
        spec, _ = _write(reader, root, slide)
        table = (root / "S.tsv").read_text().replace("G2", "G\u00e8ne", 1)
        (root / "S.tsv").write_bytes(table.encode("latin-1"))
        _refused(spec, "S.tsv", "not UTF-8", "re-save it as UTF-8")
    elif reader == "hest":  # the patch file's barcodes
        spec, _ = _write(reader, root, slide)
        with h5py.File(root / "patches" / "S.h5", "r+") as f:
            bc = f["barcode"][()]
            bc[2, 0] = b"AC\xe8"
            del f["barcode"]
            f.create_dataset("barcode", data=bc)
        _refused(spec, "patches/S.h5 barcode row 2", "not UTF-8")
    else:  # the AnnData file's gene names
        spec, where = _write(reader, root, slide)
        _latin1_index(root / where, "var")
        _refused(spec, where, "not UTF-8", "rewrite")


# -- coordinates that do not match the image ---------------------------------------------------------
@pytest.mark.parametrize("reader", READERS)
def test_coordinates_do_not_match_the_image(reader, tmp_path):
    slide = _slide(reader)
    if reader in ("hest", "hest-bench"):
        # the h5ad's spot centres in another pixel frame (x3) than the patches' own coords
        spec, where = _write(reader, tmp_path / "d", slide, coords=slide["coords"] * 3)
        _refused(spec, "patches/S.h5", where, "more than a patch width", "give the matching files")
        return
    spec, where = _write(reader, tmp_path / "d", slide, coords=slide["coords"] * 10)
    img = {"h5ad": "S.png", "spaceranger": "image.tif", "st": "S.png"}[reader]
    _refused(spec, "outside the", img, "full-resolution image these coordinates refer to")


def test_patch_coords_half_a_patch_off_are_accepted(tmp_path):
    """hestcore's top-left convention is matched within a patch width: a file that stores centres
    (half a patch off) still loads."""
    slide = _slide("hest")
    layouts.write_hest_cut(tmp_path / "d", "S", slide)
    with h5py.File(tmp_path / "d" / "patches" / "S.h5", "r+") as f:
        f["coords"][...] = f["coords"][()] + 28
    assert hest_load(tmp_path / "d").slides[0].n_spots == 12


def hest_load(root):
    from flag_bench.datasets.readers import hest

    return hest.load(root=str(root))


# -- images: 16-bit and planar TIFFs ------------------------------------------------------------------
def _rewrite_tiff(path: Path, arr: np.ndarray, **kw) -> None:
    import tifffile

    tifffile.imwrite(path, arr, resolution=(1e4 / 2.0, 1e4 / 2.0), resolutionunit="CENTIMETER", **kw)


@pytest.mark.parametrize("kind", ["uint16", "planar", "planar-uint16", "gray-uint16"])
def test_16_bit_and_planar_tiffs_give_the_8_bit_tiles(kind, tmp_path):
    slide = _slide("spaceranger")
    spec, _ = _write("spaceranger", tmp_path / "d", slide)
    ref = _load(spec).slides[0].tiles(PatchSpec(56.0, 28))
    img = slide["image"]
    if kind.startswith("gray"):
        img = np.repeat(img[..., :1], 3, axis=2)
        _rewrite_tiff(tmp_path / "d" / "outs" / "image.tif", img, photometric="rgb")
        from flag_bench.plan import _DATASET_MEMO

        _DATASET_MEMO.clear()
        ref = _load(spec).slides[0].tiles(PatchSpec(56.0, 28))
    # 16-bit: v * 257 plus a little (as a scanner's 16-bit values are): scaled back it is v again;
    # a wrapping cast (v * 257 + 100) mod 256 is not
    wide = img.astype(np.uint32) * 257 + np.where(img < 255, 100, 0)
    arr = {"uint16": wide.astype(np.uint16), "planar": np.moveaxis(img, -1, 0).copy(),
           "planar-uint16": np.moveaxis(wide.astype(np.uint16), -1, 0).copy(),
           "gray-uint16": wide[..., 0].astype(np.uint16)}[kind]
    kw = {"photometric": "minisblack"} if kind.startswith("gray") else {"photometric": "rgb"}
    if kind.startswith("planar"):
        kw["planarconfig"] = "separate"
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    _rewrite_tiff(tmp_path / "d" / "outs" / "image.tif", arr, **kw)
    from flag_bench.plan import _DATASET_MEMO

    _DATASET_MEMO.clear()
    got = _load(spec).slides[0].tiles(PatchSpec(56.0, 28))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("kind", ["float", "stack"])
def test_unreadable_image_layouts_are_refused(kind, tmp_path):
    slide = _slide("spaceranger")
    spec, _ = _write("spaceranger", tmp_path / "d", slide)
    img = slide["image"]
    if kind == "float":
        _rewrite_tiff(tmp_path / "d" / "outs" / "image.tif", img.astype(np.float32) / 255, photometric="rgb")
        _refused(spec, "image.tif", "float32 pixels", "8-bit RGB")
    else:
        _rewrite_tiff(tmp_path / "d" / "outs" / "image.tif", np.stack([img[..., 0]] * 5), photometric="minisblack")
        _refused(spec, "image.tif", "not one RGB or grayscale plane", "8-bit RGB")


def test_metadata_not_utf8(tmp_path):
    slide = _slide("hest")
    layouts.write_hest_cut(tmp_path / "d", "S", slide)
    meta = tmp_path / "d" / "metadata" / "S.json"
    meta.write_bytes(json.dumps({"organ": "Br\u00e9ast"}, ensure_ascii=False).encode("latin-1"))
    _refused(f"hest:root={tmp_path / 'd'}", "metadata/S.json", "not valid JSON (UnicodeDecodeError)")
