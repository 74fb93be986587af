"""Image encoders and the embedding cache (hit, miss, corruption, key contents)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from flag_bench.catalog import ENCODERS
from flag_bench.datasets import embed_cache, synthetic
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.encoders import ColorStats, EfficientNetLite0


def _tiles(n=6, px=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, px, px, 3), dtype=np.uint8)


def test_registry_entries_are_the_classes():
    assert ENCODERS.get("color-stats") is ColorStats
    assert ENCODERS.get("efficientnet-lite0") is EfficientNetLite0


def test_color_stats_shape_determinism_and_sense():
    enc = ColorStats()
    t = _tiles()
    a, b = enc.encode(t), enc.encode(t.copy())
    assert a.shape == (6, enc.dim) and a.dtype == np.float32 and np.array_equal(a, b)
    # batch size does not change the numbers
    enc2 = ColorStats()
    enc2.batch_size = 2
    assert np.array_equal(enc2.encode(t), a)
    # channel means are the first three features
    assert np.allclose(a[:, :3], t.reshape(6, -1, 3).mean(axis=1) / 255.0, atol=1e-5)
    # histogram block sums to one; empty input gives an empty matrix
    assert np.allclose(a[:, -64:].sum(axis=1), 1.0, atol=1e-5)
    assert enc.encode(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, enc.dim)
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(t.astype(np.float32))


def test_efficientnet_lite0_features_offline():
    enc = EfficientNetLite0()
    t = _tiles(n=3, px=64, seed=1)  # resized to 224 inside
    a = enc.encode(t)
    assert a.shape == (3, 1280) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, enc.encode(t))  # deterministic on CPU
    assert np.abs(a[0] - a[1]).max() > 0  # different tiles, different features
    # one tile alone equals the same tile inside a batch (no batch-dependent state: eval mode)
    assert np.allclose(enc.encode(t[:1]), a[:1], atol=1e-5)


@pytest.fixture
def small_ds():
    return synthetic.load(n_slides=2, spots_per_slide=20, n_genes=10, seed=5)




def test_cache_miss_then_hit_memo_and_disk(tmp_path, small_ds, counting):
    patch = PatchSpec(112, 32)
    a = embed_cache.get_embeddings(small_ds, "S01", counting(), patch, cache_dir=tmp_path)
    assert a.shape == (20, ColorStats.dim) and a.dtype == np.float32 and not a.flags.writeable
    files = list((tmp_path / "embeddings").glob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "embeddings").glob("*.tmp"))
    assert counting.calls == 1
    # memo hit
    assert embed_cache.get_embeddings(small_ds, "S01", counting(), patch, cache_dir=tmp_path) is a
    # disk hit (memo cleared, as in a new process)
    embed_cache.clear_memo()
    b = embed_cache.get_embeddings(small_ds, "S01", counting(), patch, cache_dir=tmp_path)
    assert counting.calls == 1 and np.array_equal(a, b)
    # anything in the key changes the file: slide, patch, dataset version
    embed_cache.get_embeddings(small_ds, "S02", counting(), patch, cache_dir=tmp_path)
    embed_cache.get_embeddings(small_ds, "S01", counting(), PatchSpec(112, 24), cache_dir=tmp_path)
    other = synthetic.load(n_slides=2, spots_per_slide=20, n_genes=10, seed=6)
    embed_cache.get_embeddings(other, "S01", counting(), patch, cache_dir=tmp_path)
    assert counting.calls == 4 and len(list((tmp_path / "embeddings").glob("*.npy"))) == 4


def test_corrupt_cache_file_is_recomputed_with_warning(tmp_path, small_ds, counting):
    patch = PatchSpec(112, 32)
    a = embed_cache.get_embeddings(small_ds, "S01", counting(), patch, cache_dir=tmp_path).copy()
    (path,) = (tmp_path / "embeddings").glob("*.npy")
    for junk in (b"not a numpy file", None):
        embed_cache.clear_memo()
        if junk is None:  # valid .npy but wrong shape
            np.save(path, np.zeros((3, 3), np.float32))
        else:
            path.write_bytes(junk)
        with pytest.warns(UserWarning, match=path.name):
            b = embed_cache.get_embeddings(small_ds, "S01", counting(), patch, cache_dir=tmp_path)
        assert np.array_equal(a, b)
    # the recomputed file is valid again
    embed_cache.clear_memo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embed_cache.get_embeddings(small_ds, "S01", counting(), patch, cache_dir=tmp_path)
    assert counting.calls == 3


def test_cache_dir_from_environment(tmp_path, small_ds, monkeypatch):
    monkeypatch.setenv("FLAG_BENCH_CACHE", str(tmp_path / "envcache"))
    embed_cache.clear_memo()
    embed_cache.get_embeddings(small_ds, "S02", ColorStats(), PatchSpec(112, 16))
    assert len(list((tmp_path / "envcache" / "embeddings").glob("*.npy"))) == 1
    embed_cache.clear_memo()


def test_cache_reused_across_processes(tmp_path):
    code = (
        "import sys; from flag_bench.datasets import synthetic, embed_cache;"
        "from flag_bench.datasets.base import PatchSpec;"
        "ds = synthetic.load(n_slides=1, spots_per_slide=10, n_genes=5);"
        "from flag_bench.datasets.encoders import ColorStats;"
        "e = embed_cache.get_embeddings(ds, 'S01', ColorStats(), PatchSpec(112, 16), cache_dir=sys.argv[1]);"
        "import os; print(os.stat(next((__import__('pathlib').Path(sys.argv[1]) / 'embeddings').glob('*.npy'))).st_mtime_ns)"
    )
    def run():
        return subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                              check=True, env={**os.environ}).stdout.strip()

    first, second = run(), run()
    assert first == second  # the second process read the file and did not rewrite it


def test_cache_writes_through_the_one_atomic_writer(tmp_path, small_ds, counting, monkeypatch):
    from flag_bench import io

    written = []

    def spy(path, writer):
        written.append(path)
        return io.atomic_write(path, writer)

    monkeypatch.setattr(embed_cache, "atomic_write", spy)
    ref = embed_cache.SlideRef.of(small_ds, "S01")
    patch = PatchSpec(112, 32)
    assert not embed_cache.is_cached(ref, counting(), patch, cache_dir=tmp_path)
    embed_cache.get_embeddings(small_ds, "S01", counting(), patch, cache_dir=tmp_path)
    assert written == [embed_cache.cache_path(ref, counting(), patch, cache_dir=tmp_path)]
    assert sorted(p.name for p in written[0].parent.iterdir()) == [written[0].name]  # no temp file left
    embed_cache.clear_memo()
    assert embed_cache.is_cached(ref, counting(), patch, cache_dir=tmp_path)
    np.save(written[0], np.zeros((3, 3), np.float32))  # wrong shape: a miss
    assert not embed_cache.is_cached(ref, counting(), patch, cache_dir=tmp_path)
