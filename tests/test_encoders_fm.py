"""Pathology foundation-model encoders: the published architectures (full size on the meta
device), the loading code on small random models of the same architecture saved to tmp_path
(env var and fake Hugging Face cache, .safetensors and .bin), preprocessing, pooling, the two
one-line errors, the protocol card and one `flag-bench run --encoder phikon`."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from flag_bench.catalog import ENCODERS  # noqa: E402
from flag_bench.datasets import fm_encoders as fm  # noqa: E402
from flag_bench.datasets.encoders import ColorStats, EfficientNetLite0, file_sha256  # noqa: E402
from flag_bench.errors import UserError  # noqa: E402

NAMES = ("uni", "uni2-h", "h-optimus-0", "virchow2", "phikon", "gigapath")
# Same builder, block type (SwiGLU where published), register tokens and pooling; small width.
# 48 keeps the SwiGLU hidden width even for every published mlp_ratio.
SMALL_VIT = {"embed_dim": 48, "depth": 2, "num_heads": 2}
SMALL = {n: dict(SMALL_VIT) for n in NAMES}
SMALL["phikon"] = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 96}
# class + register tokens each published configuration puts before the patch tokens
PREFIX = {"uni": 1, "uni2-h": 1 + 8, "h-optimus-0": 1 + 4, "virchow2": 1 + 4, "phikon": 1, "gigapath": 1}


@pytest.fixture(autouse=True)
def _no_weights_anywhere(tmp_path, monkeypatch):
    """No real cache or env var leaks in: every test starts with an empty HF cache."""
    for n in NAMES:
        monkeypatch.delenv(fm.SPECS[n].env_var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))


def _tiles(n=3, px=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, px, px, 3), dtype=np.uint8)


def _save_small(name, folder, seed=0):
    """Random weights of the small `name` saved as .safetensors and .bin; returns both paths."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = fm.build_architecture(fm.SPECS[name])
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    st, bn = folder / f"{name}.safetensors", folder / f"{name}.bin"
    save_file(sd, str(st))
    torch.save(sd, bn)
    return st, bn


def _fake_hf_cache(hub, spec, source, revision="0123abcd"):
    """models--Org--Name/snapshots/<rev>/<model-card file> plus refs/main, as huggingface_hub lays it out."""
    repo = hub / ("models--" + spec.hf_repo.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    target = snap / spec.weight_files[0]
    # the file must match the name's format: convert when the model card's file is the other kind
    if target.suffix == source.suffix:
        target.write_bytes(source.read_bytes())
    elif target.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(torch.load(source, weights_only=True), str(target))
    else:
        from safetensors.torch import load_file

        torch.save(load_file(str(source)), target)
    return target


# -- published architectures, full size ----------------------------------------------------------

# Published parameter counts, at the precision each source states them:
#   phikon: "ViT-B/16, 86M" (Filiot et al. 2023), uni: ViT-L/16 "0.3B" (Chen et al. 2024),
#   h-optimus-0: "1.1B" (H-optimus-0 model card), gigapath: "1.1B" tile encoder (Xu et al. 2024).
PUBLISHED_PARAMS = {"phikon": (86, 1e6), "uni": (0.3, 1e9), "h-optimus-0": (1.1, 1e9), "gigapath": (1.1, 1e9)}


@pytest.mark.slow
def test_full_size_architectures_build_with_published_sizes_and_dims():
    for name in NAMES:
        spec = fm.SPECS[name]
        with torch.device("meta"):  # shapes only: no memory, no weights
            model = fm.build_architecture(spec)
            enc = ENCODERS.get(name)()
            out = enc.features(model, torch.empty(2, 3, spec.input_px, spec.input_px))
        assert tuple(out.shape) == (2, spec.dim) == (2, enc.dim), name
        if spec.builder == "timm":
            assert model.num_prefix_tokens == PREFIX[name], name
        if name in PUBLISHED_PARAMS:
            value, unit = PUBLISHED_PARAMS[name]
            n = sum(p.numel() for p in model.parameters())
            digits = len(str(value).split(".")[1]) if "." in str(value) else 0
            assert round(n / unit, digits) == value, (name, n)


def test_registry_is_lazy_and_names_every_buildable_model():
    code = ("import sys; from flag_bench.catalog import ENCODERS; "
            "[ENCODERS.get(n)() for n in ENCODERS.names()]; print(sorted(ENCODERS.names())); "
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False False"  # instantiating an encoder imports no torch
    assert set(NAMES) <= set(ENCODERS.names()) and "conch" not in ENCODERS.names()


# -- loading small random models through the same code path -------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_small_model_loads_from_env_var_and_hf_cache_and_encodes(name, tmp_path, monkeypatch):
    spec = fm.SPECS[name]
    tiles = _tiles(n=3, px=64, seed=1)
    with fm.architecture_override(name, **SMALL[name]):
        st, bn = _save_small(name, tmp_path / "w")
        monkeypatch.setenv(spec.env_var, str(st))
        enc = ENCODERS.get(name)()
        a = enc.encode(tiles)
        width = SMALL[name].get("embed_dim") or SMALL[name]["hidden_size"]
        assert a.shape == (3, width * (2 if spec.pooling == "cls+mean_patch" else 1)) and a.dtype == np.float32
        assert np.isfinite(a).all() and np.abs(a[0] - a[1]).max() > 0
        assert np.array_equal(a, enc.encode(tiles.copy()))  # deterministic
        one = ENCODERS.get(name)()
        one.batch_size = 1
        assert np.allclose(one.encode(tiles), a, atol=1e-5)  # no batch-dependent state
        assert enc.weights_path == st and enc.version.split("-")[1] == file_sha256(st)[:12]

        # the same weights as the model card's file in a fake HF cache, env var unset
        monkeypatch.delenv(spec.env_var)
        hub = tmp_path / "hub"
        monkeypatch.setenv("HF_HUB_CACHE", str(hub))
        cached = _fake_hf_cache(hub, spec, bn)
        enc2 = ENCODERS.get(name)()
        assert enc2.weights_path == cached
        assert np.allclose(enc2.encode(tiles), a, atol=1e-5)
        # the cache key follows the file's content: same bytes, same key; other bytes, another
        assert (enc2.version == enc.version) == (cached.read_bytes() == st.read_bytes())

        # token layout and pooling, recomputed by hand from the loaded model's tokens
        model = enc2.model("cpu")
        x = enc2.preprocess(tiles)
        with torch.inference_mode():
            if spec.builder == "timm":
                assert model.num_prefix_tokens == PREFIX[name]
                tokens = model.forward_features(x)
            else:
                tokens = model(pixel_values=x).last_hidden_state
        n_patch = (spec.input_px // (16 if name in ("uni", "phikon", "gigapath") else 14)) ** 2
        assert tokens.shape[1] == PREFIX[name] + n_patch
        want = tokens[:, 0]
        if spec.pooling == "cls+mean_patch":
            want = torch.cat([tokens[:, 0], tokens[:, PREFIX[name]:].mean(1)], dim=1)
        assert np.allclose(want.numpy(), a, atol=1e-5)


@pytest.mark.parametrize("name", ["h-optimus-0", "gigapath"])
def test_preprocessing_matches_a_pil_pipeline(name):
    """resize (antialiased; bicubic for gigapath, 256 px then a 224 centre crop), then mean/std,
    checked against PIL on one smooth tile; a tile equal to the mean colour normalises to 0."""
    from PIL import Image

    spec = fm.SPECS[name]
    enc = ENCODERS.get(name)()
    yy, xx = np.mgrid[0:448, 0:448]
    tile = np.stack([(yy * 255 / 447), (xx * 255 / 447), ((xx + yy) * 255 / 894)], -1).astype(np.uint8)
    got = enc.preprocess(tile[None]).numpy()[0]
    assert got.shape == (3, spec.input_px, spec.input_px)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[spec.interpolation]
    img = np.asarray(Image.fromarray(tile).resize((spec.resize_px, spec.resize_px), resample), dtype=np.float32)
    o = (spec.resize_px - spec.crop_px) // 2
    img = img[o:o + spec.crop_px, o:o + spec.crop_px] / 255.0
    ref = ((img - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)
    # PIL rounds to uint8: allow a little more than one grey level, in normalised units
    assert np.abs(got - ref).max() < 2.5 / 255 / min(spec.std)
    flat = np.broadcast_to(np.round(np.array(spec.mean) * 255).astype(np.uint8), (1, 32, 32, 3))
    assert np.abs(enc.preprocess(flat).numpy()).max() < 0.6 / 255 / min(spec.std)


# -- the two errors ------------------------------------------------------------------------------

def _one_line(exc_info, *fragments):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_missing_weights_name_the_env_var_and_repo(tmp_path, monkeypatch):
    with pytest.raises(UserError) as e:
        ENCODERS.get("uni2-h")().encode(_tiles())
    _one_line(e, "FLAG_BENCH_UNI2_H_WEIGHTS", "MahmoodLab/UNI2-h")
    monkeypatch.setenv("FLAG_BENCH_H_OPTIMUS_0_WEIGHTS", str(tmp_path / "nope.safetensors"))
    with pytest.raises(UserError) as e:
        _ = ENCODERS.get("h-optimus-0")().version
    _one_line(e, "FLAG_BENCH_H_OPTIMUS_0_WEIGHTS", "nope.safetensors", "bioptimus/H-optimus-0")
    # a set variable that points nowhere never falls through to a cache that has the file
    hub = tmp_path / "hub"
    with fm.architecture_override("uni", **SMALL["uni"]):
        st, _ = _save_small("uni", tmp_path / "w")
    cached = _fake_hf_cache(hub, fm.SPECS["uni"], st)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert ENCODERS.get("uni")().weights_path == cached
    monkeypatch.setenv("FLAG_BENCH_UNI_WEIGHTS", str(tmp_path / "missing.bin"))
    with pytest.raises(UserError, match="FLAG_BENCH_UNI_WEIGHTS"):
        _ = ENCODERS.get("uni")().version


def test_weights_of_another_architecture_name_file_model_and_key(tmp_path, monkeypatch):
    with fm.architecture_override("uni", **SMALL["uni"]):
        uni_st, _ = _save_small("uni", tmp_path / "w")
    with fm.architecture_override("virchow2", **SMALL["virchow2"]):
        monkeypatch.setenv("FLAG_BENCH_VIRCHOW2_WEIGHTS", str(uni_st))
        with pytest.raises(UserError) as e:
            ENCODERS.get("virchow2")().encode(_tiles())
        _one_line(e, str(uni_st), "virchow2", "key '")
    # same family, one block more in the model than in the file: the first missing key is named
    with fm.architecture_override("uni", **{**SMALL["uni"], "depth": 3}):
        monkeypatch.setenv("FLAG_BENCH_UNI_WEIGHTS", str(uni_st))
        with pytest.raises(UserError) as e:
            ENCODERS.get("uni")().encode(_tiles())
        _one_line(e, "key 'blocks.2.", "missing")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    with fm.architecture_override("uni", **SMALL["uni"]):
        monkeypatch.setenv("FLAG_BENCH_UNI_WEIGHTS", str(junk))
        with pytest.raises(UserError) as e:
            ENCODERS.get("uni")().encode(_tiles())
        _one_line(e, str(junk), "cannot read")


def test_first_mismatch_reference():
    a = {"x": torch.zeros(2), "y": torch.zeros(3)}
    assert fm.first_mismatch(a, dict(a)) is None
    assert "'y' is missing" in fm.first_mismatch(a, {"x": a["x"]})
    assert "'x' has shape (3,)" in fm.first_mismatch(a, {"x": torch.zeros(3), "y": a["y"]})
    assert "'z' in the file" in fm.first_mismatch(a, {**a, "z": torch.zeros(1)})


def test_sha256_memo_follows_the_file(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f) == hashlib.sha256(b"abc").hexdigest()
    f.write_bytes(b"abcd")  # new size: not served from the memo
    assert file_sha256(f) == hashlib.sha256(b"abcd").hexdigest()


# -- provenance, protocol card, cell identity ----------------------------------------------------

def test_provenance_of_every_encoder(tmp_path, monkeypatch):
    assert ColorStats().provenance()["weights"] is None
    eff = EfficientNetLite0().provenance()
    assert eff["weights"]["sha256"] == file_sha256(EfficientNetLite0.weights_path()) and eff["dim"] == 1280
    assert ColorStats().identity() == "color-stats" and EfficientNetLite0().identity() == "efficientnet-lite0"
    with fm.architecture_override("phikon", **SMALL["phikon"]):
        st, _ = _save_small("phikon", tmp_path / "w")
        monkeypatch.setenv("FLAG_BENCH_PHIKON_WEIGHTS", str(st))
        p = ENCODERS.get("phikon")().provenance()
    assert p["weights"]["path"] == str(st) and p["weights"]["sha256"] == file_sha256(st)
    assert p["pretrained_on"] == ["TCGA"] and p["input_px"] == 224 and p["um_per_px"] == 0.5
    assert p["expected_patch_um"] == 112.0 and ENCODERS.get("phikon")().preferred_patch().key() == "112um-224px"
    assert p["arch_override"] == SMALL["phikon"] and p["version"].startswith(fm.SPEC_REVISION + "-")


def test_pretraining_overlap_is_case_insensitive_and_sorted():
    from flag_bench.plan import pretraining_overlap

    assert pretraining_overlap(("hest-1K", "TCGA"), ("HER2ST", "HEST-1k")) == ["HEST-1k"]
    assert pretraining_overlap(("TCGA",), ("HER2ST", "HEST-1k")) == []
    assert pretraining_overlap(("b", "A"), ("a", "B", "c")) == ["B", "a"]
    assert pretraining_overlap((), ()) == []


def test_plan_records_encoder_and_flags_overlap(tmp_path, monkeypatch):
    from flag_bench.config import RunConfig
    from flag_bench.plan import plan_grid

    def plan(encoder):
        cfg = RunConfig(methods=("ridge",), genes=(20,), encoder=encoder, folds=(0,), device="cpu",
                        results_dir=str(tmp_path / "r"))
        return plan_grid(cfg, device="cpu", provenance={}, results_dir=str(tmp_path / "r")).tasks

    (base,) = plan("color-stats")
    assert base.cell.encoder == "color-stats"  # existing grids keep their cell ids
    assert base.protocol["encoder_info"]["name"] == "color-stats"
    assert base.protocol["dataset_corpora"] == ["HER2ST", "HEST-1k"] and base.protocol["pretraining_overlap"] == []
    with fm.architecture_override("phikon", **SMALL["phikon"]):
        st, _ = _save_small("phikon", tmp_path / "w")
        monkeypatch.setenv("FLAG_BENCH_PHIKON_WEIGHTS", str(st))
        monkeypatch.setattr(fm.Phikon, "pretrained_on", ("TCGA", "hest-1k"))  # as if pretrained on HEST
        (t,) = plan("phikon")
    assert t.protocol["pretraining_overlap"] == ["HEST-1k"]
    assert t.protocol["pretraining_overlap_by"] == {"encoder": ["HEST-1k"], "method": []}
    assert t.protocol["encoder_info"]["weights"]["sha256"] == file_sha256(st)
    assert t.cell.encoder.startswith("phikon@") and t.cell.cell_id != base.cell.cell_id
    assert t.encoder == "phikon"

    # a worker resolves the encoder again: the planned weights pass, other weights fail the cell
    from flag_bench.cell import run_encoder

    with fm.architecture_override("phikon", **SMALL["phikon"]):
        assert run_encoder(t).weights_path == st
        other, _ = _save_small("phikon", tmp_path / "w2", seed=1)
        monkeypatch.setenv("FLAG_BENCH_PHIKON_WEIGHTS", str(other))
        with pytest.raises(UserError, match="same weights file"):
            run_encoder(t)


@pytest.mark.slow
def test_cli_run_with_phikon_and_a_missing_weights_path(tmp_path, monkeypatch):
    from flag_bench.cli import app
    from flag_bench.store import ResultsStore

    runner = CliRunner()
    syn = "synthetic:n_slides=3,spots_per_slide=30,n_genes=40,seed=3"
    base = ["run", "--datasets", syn, "--methods", "ridge", "--genes", "10", "--folds", "0", "--encoder", "phikon",
            "--preset", "tiny", "--device", "cpu", "--no-progress"]
    res = runner.invoke(app, [*base, "--results-dir", str(tmp_path / "bad")])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert text.startswith("error:") and "\n" not in text and "FLAG_BENCH_PHIKON_WEIGHTS" in text
    assert "owkin/phikon" in text and not (tmp_path / "bad" / "cells").exists()

    with fm.architecture_override("phikon", **SMALL["phikon"]):
        st, _ = _save_small("phikon", tmp_path / "w")
        monkeypatch.setenv("FLAG_BENCH_PHIKON_WEIGHTS", str(st))
        res = runner.invoke(app, [*base, "--results-dir", str(tmp_path / "r")])
        assert res.exit_code == 0, res.output
    (rec,) = ResultsStore(str(tmp_path / "r")).records()
    assert rec.status == "ok" and rec.cell.encoder.startswith("phikon@")
    info = rec.protocol["encoder_info"]
    assert info["weights"]["sha256"] == file_sha256(st) and info["pretrained_on"] == ["TCGA"]
    assert rec.protocol["pretraining_overlap"] == []
