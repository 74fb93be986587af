"""The embedding cache is keyed by a slide's own content, not by the loaded dataset's version;
in-process memos are bounded in bytes; `flag-bench cache info | prune`."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from flag_bench.cli import app
from flag_bench.datasets import embed_cache, her2st_mini, synthetic
from flag_bench.datasets.base import PatchSpec
from flag_bench.datasets.encoders import ColorStats
from flag_bench.datasets.readers import hest
import layouts

runner = CliRunner()




@pytest.fixture(scope="module")
def hest_two(tmp_path_factory):
    mini = her2st_mini.load()
    return layouts.write_hest(mini, tmp_path_factory.mktemp("hest") / "hest", ["C2", "C3"])


def test_a_slide_encoded_with_others_is_not_re_encoded_alone(hest_two, tmp_path, counting):
    patch = PatchSpec(112.0, 32)
    both = hest.load(root=str(hest_two), ids="C2+C3")
    alone = hest.load(root=str(hest_two), ids="C2")
    assert both.version != alone.version  # the dataset version depends on the slides loaded
    first = {sid: embed_cache.get_embeddings(both, sid, counting(), patch, cache_dir=tmp_path).copy()
             for sid in both.slide_ids}
    encoded = counting.calls
    assert encoded >= 2
    embed_cache.clear_memo()  # as in a new process: only the disk cache is left
    ref = embed_cache.SlideRef.of(alone, "C2")
    assert embed_cache.is_cached(ref, counting(), patch, cache_dir=tmp_path)
    again = embed_cache.get_embeddings(alone, "C2", counting(), patch, cache_dir=tmp_path)
    assert counting.calls == encoded  # nothing encoded
    assert again.tobytes() == first["C2"].tobytes()  # bit-identical
    # through the CLI too: `embed` of the one-slide spec finds it cached
    res = runner.invoke(app, ["embed", f"hest:root={hest_two},ids=C2", "--encoder", "color-stats", "--patch-px", "32",
                              "--cache-dir", str(tmp_path / "cli"), "--no-progress"])
    assert res.exit_code == 0 and "embedded 1 slide(s)" in res.output, res.output
    res = runner.invoke(app, ["embed", f"hest:root={hest_two},ids=C2+C3", "--encoder", "color-stats",
                              "--patch-px", "32", "--cache-dir", str(tmp_path / "cli"), "--no-progress"])
    assert res.exit_code == 0 and "embedded 1 slide(s)" in res.output and "1 already cached" in res.output, res.output


def test_content_changes_still_change_the_key(hest_two, tmp_path):
    ds = hest.load(root=str(hest_two), ids="C2")
    enc, patch = ColorStats(), PatchSpec(112.0, 32)
    ref = embed_cache.SlideRef.of(ds, "C2")
    key = embed_cache.cache_key(ref, enc, patch)
    # another slide, another patch, another encoder version, another device kind: other keys
    assert embed_cache.cache_key(embed_cache.SlideRef.of(hest.load(root=str(hest_two), ids="C3"), "C3"),
                                 enc, patch) != key
    assert embed_cache.cache_key(ref, enc, PatchSpec(112.0, 24)) != key
    class Newer(ColorStats):
        version = ColorStats.version + "-newer"
        device_dependent = True

    assert embed_cache.cache_key(ref, Newer(), patch) != key
    assert embed_cache.cache_key(ref, Newer(), patch, "cuda") != embed_cache.cache_key(ref, Newer(), patch, "cpu")
    # a rewritten patch file (new mtime) is another source
    f = hest_two / "patches" / "C2.h5"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert embed_cache.SlideRef.of(hest.load(root=str(hest_two), ids="C2"), "C2").content != ref.content
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    # synthetic: the same slide of another seed renders other tiles; her2st-mini: keyed by content
    a = synthetic.load(n_slides=2, spots_per_slide=10, n_genes=5, seed=1)
    b = synthetic.load(n_slides=2, spots_per_slide=10, n_genes=5, seed=2)
    c = synthetic.load(n_slides=3, spots_per_slide=10, n_genes=5, seed=1)
    assert embed_cache.SlideRef.of(a, "S01").content != embed_cache.SlideRef.of(b, "S01").content
    assert embed_cache.SlideRef.of(a, "S01").content and embed_cache.SlideRef.of(c, "S01").content
    mini = her2st_mini.load()
    assert embed_cache.SlideRef.of(mini, "C2").content != embed_cache.SlideRef.of(mini, "C3").content


def test_her2st_mini_numbers_do_not_change(tmp_path, counting):
    """Only the key changed: the embeddings are those of encoding the tiles."""
    mini = her2st_mini.load()
    patch = PatchSpec(112.0, 32)
    got = embed_cache.get_embeddings(mini, "B4", counting(), patch, cache_dir=tmp_path)
    np.testing.assert_array_equal(got, ColorStats().encode(mini.slide("B4").tiles(patch)))


def test_a_reader_without_fingerprint_keys_by_dataset_version(tmp_path):
    ds = synthetic.load(n_slides=1, spots_per_slide=10, n_genes=5, seed=1)
    s = ds.slide("S01")

    class Plain:  # a plugin's reader: no fingerprint
        def __call__(self, slide_id, patch, spots=None):
            return s.tile_reader(slide_id, patch, spots)

    import dataclasses

    plain = dataclasses.replace(ds, slides=(dataclasses.replace(s, tile_reader=Plain()),))
    ref = embed_cache.SlideRef.of(plain, "S01")
    assert ref.content == ""
    other = dataclasses.replace(plain, version="other")
    assert embed_cache.cache_key(ref, ColorStats(), PatchSpec()) != \
        embed_cache.cache_key(embed_cache.SlideRef.of(other, "S01"), ColorStats(), PatchSpec())


# ---------------------------------------------------------------------------------------------
# memos bounded in bytes
# ---------------------------------------------------------------------------------------------

def test_memo_over_its_bound_forgets_least_recently_used(monkeypatch):
    from flag_bench.datasets.memo import ByteMemo, parse_bytes

    assert parse_bytes("512MiB") == 512 << 20 and parse_bytes("2GB") == 2 * 10**9 and parse_bytes("100") == 100
    monkeypatch.setenv("FLAG_BENCH_MEMO_BYTES", "3000")
    a, b = ByteMemo("a"), ByteMemo("b")
    try:
        x = [np.full(100, i, dtype=np.float64) for i in range(4)]  # 800 bytes each
        a.put(0, x[0])
        b.put(1, x[1])
        a.put(2, x[2])
        assert a[0] is x[0]  # 0 used: 1 is now the least recently used
        b.put(3, x[3])  # 3200 bytes > 3000: 1 goes, across memos
        assert 1 not in b and 3 in b and 0 in a and 2 in a
        assert a.nbytes + b.nbytes == 2400
        big = np.zeros(1000)  # 8000 bytes: more than the whole bound, returned, never kept
        assert a.put("big", big) is big and "big" not in a and 0 in a
    finally:
        a.clear()
        b.clear()


def test_embeddings_memo_evicts_and_results_stay_identical(tmp_path, monkeypatch, counting):
    ds = synthetic.load(n_slides=3, spots_per_slide=20, n_genes=5, seed=3)
    patch = PatchSpec(112.0, 16)
    one = 20 * ColorStats.dim * 4
    monkeypatch.setenv("FLAG_BENCH_MEMO_BYTES", str(2 * one + 10))  # room for two slides
    first = [embed_cache.get_embeddings(ds, s, counting(), patch, cache_dir=tmp_path) for s in ds.slide_ids]
    assert len(embed_cache._MEMO) == 2 and "S01" not in " ".join(embed_cache._MEMO)
    # S01 comes back from disk, identical, without encoding
    n = counting.calls
    again = embed_cache.get_embeddings(ds, "S01", counting(), patch, cache_dir=tmp_path)
    assert counting.calls == n and again.tobytes() == first[0].tobytes()


def test_fold_expression_memo_is_bounded(monkeypatch):
    from flag_bench.datasets import splits
    from flag_bench.datasets.fold import FoldBuilder, FoldSpec
    from flag_bench.datasets.panels import HMHVG
    from flag_bench.spec import PanelSpec, TargetTransform

    ds = synthetic.load(n_slides=3, spots_per_slide=30, n_genes=40, seed=4)
    fold = splits.Fold("test=S03", ("S01", "S02"), (), ("S03",))
    spec = FoldSpec(PanelSpec("hmhvg"), 10, fold, TargetTransform.LOG1P)
    free = FoldBuilder(ds, patch=PatchSpec(), encoder=None, device="cpu", cache_dir=None)
    want = free.build(spec, HMHVG(), embeddings=False)
    assert len(free._expression) == 3  # (counts, targets) of 30 spots x 10 genes: 2400 bytes each
    from flag_bench.datasets.memo import total_bytes

    monkeypatch.setenv("FLAG_BENCH_MEMO_BYTES", "6000")  # two of them and the spot libraries
    tight = FoldBuilder(ds, patch=PatchSpec(), encoder=None, device="cpu", cache_dir=None)
    got = tight.build(spec, HMHVG(), embeddings=False)
    # the budget is shared: the older builder's entries went first, then the tight one's oldest
    assert len(free._expression) == 0 and 1 <= len(tight._expression) <= 2 and total_bytes() <= 6000
    for a, b in zip(want.truths, got.truths):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(want.train.slides, got.train.slides):
        assert a.targets.tobytes() == b.targets.tobytes()


# ---------------------------------------------------------------------------------------------
# flag-bench cache info | prune
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def filled(tmp_path):
    cache = tmp_path / "cache"
    ds = synthetic.load(n_slides=2, spots_per_slide=10, n_genes=5, seed=1)
    embed_cache.clear_memo()
    for sid in ds.slide_ids:
        embed_cache.get_embeddings(ds, sid, ColorStats(), PatchSpec(112.0, 16), cache_dir=cache)
    files = sorted((cache / "embeddings").glob("*.npy"))
    # age one file by 10 days
    old = files[0]
    t = time.time() - 10 * 86400
    os.utime(old, (t, t))
    embed_cache.clear_memo()
    yield cache, old
    embed_cache.clear_memo()


def test_cache_info_lists_size_entries_per_encoder(filled):
    cache, _ = filled
    res = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    assert str(cache / "embeddings") in res.output.replace("\n", "")
    assert "2 entries" in res.output and "color-stats" in res.output and "oldest" in res.output
    empty = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache.parent / "none")])
    assert empty.exit_code == 0 and "empty" in empty.output


def test_cache_prune_by_age_encoder_all_and_dry_run(filled):
    cache, old = filled
    n = lambda: len(list((cache / "embeddings").glob("*.npy")))  # noqa: E731
    res = runner.invoke(app, ["cache", "prune", "--older-than", "5", "--dry-run", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and "would delete" in res.output and old.name in res.output.replace("\n", "")
    assert n() == 2
    res = runner.invoke(app, ["cache", "prune", "--older-than", "5", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and "freed" in res.output and n() == 1 and not old.exists()
    res = runner.invoke(app, ["cache", "prune", "--encoder", "efficientnet-lite0", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and n() == 1
    res = runner.invoke(app, ["cache", "prune", "--encoder", "color-stats", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and n() == 0, res.output


def test_cache_prune_stale_deletes_only_older_format_entries(filled):
    cache, old = filled
    legacy = cache / "embeddings" / "synthetic-S01-color-stats-112um-16px-0123456789abcdef.npy"
    legacy.write_bytes(old.read_bytes())
    res = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache)])
    assert "1 in the older key format" in res.output, res.output
    res = runner.invoke(app, ["cache", "prune", "--stale", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and not legacy.exists() and len(list((cache / "embeddings").glob("*.npy"))) == 2


def test_cache_prune_all(filled):
    cache, _ = filled
    res = runner.invoke(app, ["cache", "prune", "--all", "--cache-dir", str(cache)])
    assert res.exit_code == 0 and "freed" in res.output and not list((cache / "embeddings").glob("*.npy"))


@pytest.mark.parametrize("args,words", [
    ([], "--older-than"),
    (["--all", "--encoder", "x"], "--all"),
    (["--all", "--stale"], "--all"),
    (["--older-than", "-1"], "--older-than"),
    (["--older-than", "soon"], "soon"),
])
def test_cache_prune_bad_options_one_line_exit_2(filled, args, words):
    cache, _ = filled
    res = runner.invoke(app, ["cache", "prune", *args, "--cache-dir", str(cache)])
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
    assert len(list((cache / "embeddings").glob("*.npy"))) == 2
