"""Results bundles: export a results dir with a sha256 manifest, verify and read one back (issue 25).

A bundle is laid out like a results store, so ``flag_bench.store.ResultsStore`` reads it as it is:

    bundle.json            what exported it and where (BUNDLE_SCHEMA_VERSION; docs/bundle.schema.json)
    cells/<id>.json        every finished record, byte for byte as stored (its protocol card,
                           resolved config and provenance are inside it)
    cells/<id>.failed-*.json  every failed attempt, so a report lists the same failed cells
    plans/*.json           the plans, so a report lists the same planned-but-missing cells
    artifacts/<id>/        per_gene_metrics.csv, config.json, genes.txt; predictions.h5ad with
                           --predictions; model/ (flag-bench run --save-models) with --models
    MANIFEST.sha256        "<sha256>  <path>" per file but itself, sorted: `sha256sum -c` reads it

``export`` builds the bundle under a temporary name beside the output and renames it into place,
so a failed export leaves nothing half-written. ``open_bundle`` returns a verified folder (an
archive is extracted into a temporary folder removed when the process exits): any file whose
sha256 differs from the manifest, any listed file missing and any file present but not listed is
a one-line ``UserError`` naming that file, before anything is read.

Bundles travel to other labs. bundle.json is built from named fields only and checked for
credentials (``flag_bench.redact``) and for the exporting user's home folder; records are copied
as they are (``home_paths`` counts the files that name the home folder, which export reports).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from flag_bench.errors import UserError
from flag_bench.hashing import file_sha256
from flag_bench.io import atomic_write_bytes, fsync_dir
from flag_bench.record import SCHEMA_VERSION as RECORD_SCHEMA_VERSION
from flag_bench.record import CellRecord

BUNDLE_SCHEMA_VERSION = 1
INFO = "bundle.json"
MANIFEST = "MANIFEST.sha256"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# what a cell's artifact folder contributes by default; the rest is asked for
ARTIFACTS = ("per_gene_metrics.csv", "config.json", "genes.txt")
PREDICTIONS = "predictions.h5ad"
MODEL_DIR = "model"


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    cells: int  # finished records
    failed: int  # cells with failed attempts and no finished record
    failed_attempts: int  # failed-attempt files copied
    plans: int
    bytes: int  # the folder's files, or the archive
    home_paths: int  # copied files that name the exporting user's home folder

    def line(self) -> str:
        return (f"wrote {self.path}: {self.cells} cells, {self.failed} failed, {self.plans} plans, "
                f"{self.bytes / 1e6:.{1 if self.bytes >= 1e6 else 2}f} MB")


# -- the environment ----------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """The exporting machine: package versions, python, torch and its CUDA, CPU and GPU models.
    Each record holds its own provenance (where it was computed); this says where it was exported."""
    import platform

    from flag_bench.measure import _PACKAGES, cpu_model, gpu_models

    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for pkg in (*_PACKAGES, "flag-bench"):
        try:
            packages[pkg] = version(pkg)
        except PackageNotFoundError:
            packages[pkg] = None
    torch_version = torch_cuda = None
    try:
        import torch

        torch_version, torch_cuda = str(torch.__version__), torch.version.cuda
    except ImportError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages,
            "torch": torch_version, "torch_cuda": torch_cuda, "cpu_model": cpu_model(), "gpus": gpu_models()}


def _exporter() -> dict[str, Any]:
    from flag_bench import PROTOCOL_VERSION, __version__
    from flag_bench.measure import _git

    commit, dirty = _git(Path(__file__).resolve().parent.parent)
    return {"version": __version__, "git_commit": commit, "git_dirty": dirty, "protocol_version": PROTOCOL_VERSION}


def _home() -> str | None:
    with contextlib.suppress(RuntimeError, KeyError):
        home = str(Path.home())
        return home if home not in ("", "/") else None
    return None


def check_shareable(doc: Any, where: str) -> None:
    """A ``UserError`` when any text in ``doc`` holds a credential or the exporting user's home
    folder: bundle.json is built from named fields, so either is a flag-bench bug to report."""
    from flag_bench.redact import redact_text

    home = _home()
    for text in _strings(doc):
        if redact_text(text) != text:
            raise UserError(f"{where}: would carry a credential ({redact_text(text)}); nothing was written. "
                            "Please report this flag-bench bug")
        if home and home in text:
            raise UserError(f"{where}: would carry your home folder ({text}); nothing was written. "
                            "Please report this flag-bench bug")


def _strings(doc: Any) -> Iterable[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, Mapping):
        for k, v in doc.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(doc, (list, tuple)):
        for v in doc:
            yield from _strings(v)


# -- export -------------------------------------------------------------------------------------
def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "bundle"
    return name


def export(results_dir: str | os.PathLike, output: str | os.PathLike, *, predictions: bool = False,
           models: bool = False, select: Callable[[CellRecord], bool] | None = None,
           plan_filter: Callable[[dict], bool] | None = None, suite: str | None = None) -> ExportSummary:
    """Write ``results_dir`` as a bundle at ``output`` (a folder, or one archive when the name ends
    in .tar.gz or .tgz). ``select`` keeps records (finished and failed) and ``plan_filter`` plans:
    a suite's cells, say (the caller applies leaderboard.sources' suite rule; ``suite`` is recorded)."""
    from flag_bench.store import ResultsStore

    src, out = Path(results_dir), Path(output)
    if not (src / "cells").is_dir():
        raise UserError(f"{src}: no results here (no cells/ folder); give the --results-dir of `flag-bench run`")
    _refuse_existing(out)
    store = ResultsStore(src)
    keep = select or (lambda rec: True)
    # a torn or foreign record is refused here, naming its file, rather than exported
    finished = [(store.record_path(rec.cell_id), rec) for rec in store.records() if keep(rec)]
    attempts = [(path, rec) for path, rec in store.failures() if keep(rec)]
    done = {rec.cell_id for _, rec in finished}
    plan_paths = []
    for path in sorted((src / "plans").glob("*.json")) if (src / "plans").is_dir() else []:
        try:
            plan = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # the report skips an unreadable plan too
        if plan_filter is None or plan_filter(plan):
            plan_paths.append(path)
    if models and not any((store.artifact_dir(rec.cell_id) / MODEL_DIR).is_dir() for _, rec in finished):
        raise UserError(f"--models: no cell of {src} has a saved model (artifacts/<cell_id>/{MODEL_DIR}/); "
                        "run with --save-models, or export without --models")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        root = tmp / _stem(out) if is_archive(out) else tmp
        root.mkdir(parents=True)
        copied: list[Path] = []
        for path, _ in [*finished, *attempts]:
            copied.append(_copy(path, root / "cells" / path.name))
        for path in plan_paths:
            copied.append(_copy(path, root / "plans" / path.name))
        n_predictions = n_models = 0
        for _, rec in finished:
            art = store.artifact_dir(rec.cell_id)
            names = [*ARTIFACTS, *([PREDICTIONS] if predictions else [])]
            for name in names:
                if (art / name).is_file():
                    copied.append(_copy(art / name, root / "artifacts" / rec.cell_id / name))
                    n_predictions += name == PREDICTIONS
            if models and (art / MODEL_DIR).is_dir():
                copied += _copy_tree(art / MODEL_DIR, root / "artifacts" / rec.cell_id / MODEL_DIR)
                n_models += 1
        failed = len({rec.cell_id for _, rec in attempts} - done)
        info = {
            "schema_version": BUNDLE_SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "exported_by": _exporter(),
            "record_schema_version": RECORD_SCHEMA_VERSION,
            # its name only: the exporting machine's path is nobody else's business
            "results_dir_name": src.resolve().name,
            "suite": suite,
            "counts": {"cells": len(finished), "failed": failed, "failed_attempts": len(attempts),
                       "plans": len(plan_paths), "predictions": n_predictions, "models": n_models},
            "includes_predictions": bool(predictions),
            "includes_models": bool(models),
            "environment": environment(),
        }
        check_shareable(info, f"{out}/{INFO}")
        atomic_write_bytes(root / INFO, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())
        write_manifest(root)
        home = _home()
        home_paths = sum(1 for p in copied if home and p.suffix in (".json", ".txt", ".csv")
                         and home.encode() in p.read_bytes())
        if is_archive(out):
            archive = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                _write_archive(root, archive)
                _no_clobber(out)
                os.replace(archive, out)
            finally:
                archive.unlink(missing_ok=True)
            size = out.stat().st_size
        else:
            _no_clobber(out)
            if out.is_dir():
                out.rmdir()  # empty (checked): the rename takes its place
            os.rename(root, out)
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        fsync_dir(out.parent)
    except OSError as exc:
        raise UserError(f"--output {out}: cannot write the bundle ({exc.strerror or type(exc).__name__}); "
                        "nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportSummary(out, len(finished), failed, len(attempts), len(plan_paths), size, home_paths)


def _refuse_existing(out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--output {out}: a file is there already; choose a new name (a bundle is never overwritten)")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--output {out}: a folder with files is there already; choose a new or empty folder")
    if out.exists() and is_archive(out):
        raise UserError(f"--output {out}: a folder has this archive's name; choose another name")


def _no_clobber(out: Path) -> None:
    """Checked again just before the rename: another process may have written there meanwhile."""
    _refuse_existing(out)


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _copy_tree(src: Path, dst: Path) -> list[Path]:
    """A saved model's folder, plain files only: a link would carry a file from outside it."""
    out = []
    for path in sorted(src.rglob("*")):
        if path.is_symlink():
            raise UserError(f"{path}: a link inside a saved model; bundles carry plain files only: replace it "
                            "with the file, or export without --models")
        if path.is_file():
            out.append(_copy(path, dst / path.relative_to(src)))
    return out


def _write_archive(root: Path, archive: Path) -> None:
    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # the exporting user's account stays home
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=root.name, recursive=False, filter=anonymous)
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=f"{root.name}/{path.relative_to(root).as_posix()}", recursive=False,
                    filter=anonymous)
    with open(archive, "rb+") as fh:
        os.fsync(fh.fileno())


# -- the manifest -------------------------------------------------------------------------------
def _files(root: Path) -> list[str]:
    """Every path under ``root`` as relative posix text; a link or special file is refused (it
    would read from outside the bundle)."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UserError(f"{root}/{rel}: not a plain file or folder (a link?); a bundle holds plain files only")
        if path.is_file() and rel != MANIFEST:
            out.append(rel)
    return out


def write_manifest(root: Path) -> Path:
    lines = [f"{file_sha256(root / rel)}  {rel}\n" for rel in sorted(_files(root))]
    return atomic_write_bytes(root / MANIFEST, "".join(lines).encode())


def verify(root: Path, shown: str) -> None:
    """Compare ``root`` with its manifest; ``shown`` names the bundle in messages (as the user gave it)."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise UserError(f"{shown}/{MANIFEST}: missing; this bundle cannot be checked: ask for a fresh export")
    listed: dict[str, str] = {}
    for i, line in enumerate(manifest.read_text(errors="replace").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not _safe(rel):
            raise UserError(f"{shown}/{MANIFEST}: line {i} is not '<sha256>  <relative path>'; the manifest was "
                            "edited or damaged after export: ask for a fresh export")
        listed[rel] = digest
    present = set(_files(root))
    problems = []
    for rel in sorted(set(listed) | present):
        if rel not in present:
            problems.append(f"{shown}/{rel}: listed in the bundle's {MANIFEST} but missing (removed after export)")
        elif rel not in listed:
            problems.append(f"{shown}/{rel}: not listed in the bundle's {MANIFEST} (added after export)")
        elif file_sha256(root / rel) != listed[rel]:
            problems.append(f"{shown}/{rel}: sha256 differs from the bundle's {MANIFEST} (edited or damaged after "
                            "export)")
    if problems:
        more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; ask for a fresh export")


def _safe(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


# -- reading ------------------------------------------------------------------------------------
_EXTRACTED: list[str] = []


@atexit.register
def _remove_extracted() -> None:
    for d in _EXTRACTED:
        shutil.rmtree(d, ignore_errors=True)


def open_bundle(path: str | os.PathLike) -> Path:
    """A verified bundle folder, readable by ``flag_bench.store.ResultsStore``: the folder itself,
    or an archive extracted into a temporary folder that lives until the process exits."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such bundle (a folder or .tar.gz written by `flag-bench export`)")
    if path.is_dir():
        root = path
    elif tarfile.is_tarfile(path):
        root = _extract(path)
    else:
        raise UserError(f"{path}: not a bundle (a folder or .tar.gz written by `flag-bench export`)")
    read_info(root, str(path))
    verify(root, str(path))
    return root


def read_info(root: Path, shown: str | None = None) -> dict[str, Any]:
    """A bundle's bundle.json, its schema versions checked (a newer bundle is refused, not misread)."""
    shown = shown or str(root)
    try:
        info = json.loads((root / INFO).read_text())
    except FileNotFoundError:
        raise UserError(f"{shown}: no {INFO}; not a flag-bench bundle (make one with `flag-bench export`)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{shown}/{INFO}: unreadable ({type(exc).__name__}); ask for a fresh export") from None
    version = info.get("schema_version") if isinstance(info, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{shown}/{INFO}: schema_version {version!r} is not a bundle schema version; "
                        "ask for a fresh export")
    records = info.get("record_schema_version")
    if version > BUNDLE_SCHEMA_VERSION or (isinstance(records, int) and records > RECORD_SCHEMA_VERSION):
        raise UserError(f"{shown}: made by a newer flag-bench (bundle schema {version}, record schema {records}; "
                        f"this one reads {BUNDLE_SCHEMA_VERSION} and {RECORD_SCHEMA_VERSION}); upgrade flag-bench")
    return info


def _extract(archive: Path) -> Path:
    dest = tempfile.mkdtemp(prefix="flag-bench-bundle-")
    _EXTRACTED.append(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar.getmembers():
                if m.issym() or m.islnk():
                    what = "a link"
                elif not (m.isfile() or m.isdir()):
                    what = "not a plain file"
                elif not _safe(m.name.rstrip("/")):
                    what = "outside the bundle (an absolute or '..' path)"
                else:
                    continue
                raise UserError(f"{archive}: member {m.name!r} is {what}; a bundle holds plain files only: "
                                "ask for a fresh export")
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive}: cannot be read as a bundle archive ({type(exc).__name__}: {exc}); "
                        "ask for a fresh export") from None
    top = Path(dest)
    if not (top / INFO).exists():
        dirs = [p for p in top.iterdir()]
        if len(dirs) == 1 and dirs[0].is_dir():
            top = dirs[0]
    return top
