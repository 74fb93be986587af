"""Files others can plant or write (issue 23, item 2): `collect` refuses a results dir that others
can write (it unpickles submitit's files there); the store's write probe never follows a symlink;
PIL's decompression-bomb guard is raised for one slide read only, to a limit from the slide's
spots, and an image larger than that is a one-line error naming it."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flag_bench.errors import UserError


# -- collect: the results dir is a trust boundary ----------------------------------------------
def _results_dir(tmp_path: Path) -> Path:
    rd = tmp_path / "rd"
    for d in ("cells", "slurm/submissions", "slurm/jobs"):
        (rd / d).mkdir(parents=True)
    for d in (rd, rd / "slurm", rd / "slurm/submissions", rd / "slurm/jobs"):
        d.chmod(0o755)
    return rd


def _collect(*argv):
    from flag_bench.cli import app

    return CliRunner().invoke(app, ["collect", *argv], env={"COLUMNS": "300"})


def _refused(res, rd: Path, what: Path) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert f"--results-dir {rd}:" in lines[0] and str(what) in lines[0] and "--trust-results-dir" in lines[0], lines


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_collect_refuses_a_results_dir_others_can_write(tmp_path, mode):
    rd = _results_dir(tmp_path)
    rd.chmod(mode)
    _refused(_collect("--results-dir", str(rd)), rd, rd)


def test_collect_refuses_a_writable_job_folder_or_result_file(tmp_path):
    rd = _results_dir(tmp_path)
    jobs = rd / "slurm" / "jobs"
    jobs.chmod(0o777)
    _refused(_collect("--results-dir", str(rd)), rd, jobs)
    jobs.chmod(0o755)
    pkl = jobs / "7_0_0_result.pkl"
    pkl.write_bytes(b"planted")
    pkl.chmod(0o666)
    _refused(_collect("--results-dir", str(rd)), rd, pkl)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a dir to another user needs root")
def test_collect_refuses_a_results_dir_owned_by_another_user(tmp_path):
    rd = _results_dir(tmp_path)
    os.chown(rd, 65534, -1)
    _refused(_collect("--results-dir", str(rd)), rd, rd)


def test_trust_flag_lets_collect_go_on(tmp_path):
    from services import require_module  # skips without submitit; under CI=true fails
    require_module("slurm", "submitit", "pip install 'flag-bench[slurm]'")
    rd = _results_dir(tmp_path)
    rd.chmod(0o775)
    res = _collect("--results-dir", str(rd), "--trust-results-dir")
    # past the check: the next complaint is that nothing was submitted
    assert res.exit_code == 2 and "no SLURM submissions" in res.output and "--trust-results-dir" not in res.output
    rd.chmod(0o755)
    res = _collect("--results-dir", str(rd))
    assert res.exit_code == 2 and "no SLURM submissions" in res.output, res.output


# -- the store's write probe -------------------------------------------------------------------
def test_write_probe_never_follows_a_planted_symlink(tmp_path):
    from flag_bench.store import ResultsStore

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    root = tmp_path / "results"
    root.mkdir()
    link = root / f".write-probe-{os.getpid()}"
    link.symlink_to(target)
    ResultsStore(root).ensure_writable()  # still writable: the probe takes another name
    assert target.read_text() == "keep me"
    assert link.is_symlink() and os.readlink(link) == str(target)  # not ours: left alone
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".write-probe")) == [link.name]


def test_write_probe_still_reports_an_unwritable_dir(tmp_path, monkeypatch):
    from flag_bench import store

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    root = tmp_path / "results"
    monkeypatch.setattr(store.os, "open", refuse)
    with pytest.raises(UserError, match=r"^--results-dir .*results: not writable \(Permission denied\)"):
        store.ResultsStore(root).ensure_writable()


# -- PIL's decompression-bomb guard, one slide at a time ------------------------------------------
def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels (the pixel data is a stub: it must never be decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


SENTINEL = 123_456_789


def test_reading_a_slide_restores_the_pil_limit(tmp_path, monkeypatch):
    from PIL import Image

    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.readers.images import ImageTileReader, open_image_size

    path = tmp_path / "slide.png"
    Image.fromarray(np.full((64, 80, 3), 200, dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SENTINEL)
    assert open_image_size(path) == (80, 64) and Image.MAX_IMAGE_PIXELS == SENTINEL
    tiles = ImageTileReader(path, np.array([[20.0, 20.0], [60.0, 40.0]]), 1.0)("s", PatchSpec(16.0, 8))
    assert tiles.shape == (2, 8, 8, 3)
    assert Image.MAX_IMAGE_PIXELS == SENTINEL


@pytest.mark.parametrize("side", [12_000, 20_000])  # PIL only warns below twice its limit, errors above
def test_an_image_far_larger_than_its_spots_is_refused(tmp_path, monkeypatch, side):
    from PIL import Image

    from flag_bench.datasets.base import PatchSpec
    from flag_bench.datasets.readers.images import ImageTileReader

    coords, um = np.array([[20.0, 20.0], [60.0, 40.0]]), 1.0  # spots 60 px out: limit = PIL's default
    path = _png_header(tmp_path / f"bomb-{side}.png", side, side)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SENTINEL)
    with pytest.raises(UserError) as exc:
        ImageTileReader(path, coords, um)("s", PatchSpec(16.0, 8))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: the image is") and "crop it" in msg, msg
    assert Image.MAX_IMAGE_PIXELS == SENTINEL


def test_the_limit_grows_with_the_slide():
    from flag_bench.datasets.readers.images import PIL_DEFAULT_MAX_PIXELS, slide_pixel_limit

    small = slide_pixel_limit(np.array([[10.0, 10.0]]), 1.0)
    assert small == PIL_DEFAULT_MAX_PIXELS  # never below PIL's own default
    # a Visium-sized slide at 0.25 um/px: 6.5 mm of spots plus a 2 mm border, 16x in area
    big = slide_pixel_limit(np.array([[26_000.0, 26_000.0]]), 0.25)
    assert big == int(16 * (26_000 + 8_000) ** 2) and np.isfinite(big)
