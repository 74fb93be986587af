"""Saved models: a cell's fitted method as safetensors weights, config and card (issue 25).

``flag-bench run --save-models`` keeps each cell's fitted method in ``artifacts/<cell_id>/model/``
and ``flag-bench predict --model CELL_ID`` applies it to new slides. The folder:

    model.json          format_version, method and class, cell id, seed, the device it was fitted
                        on, code versions, panel genes (the output columns, in order), target
                        transform, encoder and its protocol info, patch, the card's needs, what
                        it was trained on, the method's state meta, and the sha256 of every other file
    config.json         the resolved config, preset and overrides
    card.json           the method card
    weights.safetensors every tensor and numeric array of the fitted state (CPU, one file)
    skeleton.pickle     where they go: read by a restricted unpickler (methods/common/state.py)

``load_model`` checks every sha256 before reading anything else, resolves the method by name
through the registry (the class must be the one that saved it), type-checks the config like
``make_config`` and rebuilds the method on the requested device. The sha256 sums catch a
damaged or edited file; they are no signature (whoever edits a file can edit model.json): the
restricted unpickler is what keeps a crafted skeleton from running code (docs/threat-model.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from flag_bench import resolve
from flag_bench.errors import UserError
from flag_bench.hashing import file_sha256
from flag_bench.io import fsync_dir
from flag_bench.record import jsonable

if TYPE_CHECKING:
    from flag_bench.methods.base import Method
    from flag_bench.methods.common.state import MethodState
    from flag_bench.plan import CellTask

FORMAT_VERSION = 1
MODEL_DIR = "model"  # under a cell's artifact folder; the name the record's artifacts list
MODEL_JSON = "model.json"
CONFIG_JSON = "config.json"
CARD_JSON = "card.json"
WEIGHTS = "weights.safetensors"
SKELETON = "skeleton.pickle"
FILES = (CONFIG_JSON, CARD_JSON, WEIGHTS, SKELETON)  # each hashed in model.json


class Savable(Protocol):
    def save_state(self) -> MethodState: ...


@dataclass(frozen=True)
class ModelInfo:
    """What a saved model says about itself, for ``flag-bench predict``: the output columns, the
    target space, the encoder, patch and inputs it expects, and what it was trained on."""

    method: str
    cell_id: str
    genes: tuple[str, ...]  # the predicted columns, in order
    target_transform: str  # predictions are in this space (e.g. log1p of normalised counts)
    encoder: str  # the registered encoder name the cell ran with (resolve.encoder accepts it)
    encoder_info: Mapping[str, Any]  # the protocol card's encoder_info (version, weights sha256, ...)
    patch_um: float
    patch_px: int
    needs: frozenset[str]  # the card's needs: what the slides must serve (embeddings, tiles, coords, ...)
    trained_on: Mapping[str, Any]  # dataset, spec, version, split, fold and its slides
    seed: int = 0
    preset: str = ""
    encoder_identity: str = ""  # the cell id's encoder coordinate (name@version for user weights)
    fitted_device: str = ""
    model_dir: str = ""
    versions: Mapping[str, Any] = field(default_factory=dict)
    gene_ids: tuple[str, ...] | None = None  # Ensembl ids of ``genes`` ("" where unknown), None if not saved


# -- writing ---------------------------------------------------------------------------------
def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode()


def write_state(state: MethodState, folder: Path) -> None:
    """``state``'s weights and skeleton as files of ``folder`` (which exists)."""
    from safetensors.torch import save_file

    save_file(dict(state.tensors), str(folder / WEIGHTS), metadata={"format": "flag-bench method state"})
    with open(folder / WEIGHTS, "rb+") as fh:
        os.fsync(fh.fileno())
    _write_synced(folder / SKELETON, bytes(state.skeleton))


def read_state(folder: Path, meta: Mapping[str, Any]) -> MethodState:
    """The MethodState ``write_state`` wrote to ``folder`` (tensors on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from flag_bench.methods.common.state import MethodState

    try:
        # copied out of the file's buffer: its data sits at 8-byte offsets, and CPU kernels
        # take other (last-bit different) paths on memory that is not aligned as torch aligns it
        tensors = {k: v.clone() for k, v in load_file(str(folder / WEIGHTS), device="cpu").items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{folder / WEIGHTS}: not a readable safetensors file ({exc})") from None
    try:
        skeleton = (folder / SKELETON).read_bytes()
    except OSError as exc:
        raise UserError(f"{folder / SKELETON}: cannot be read ({exc.strerror})") from None
    return MethodState(tensors=tensors, meta=dict(meta), skeleton=skeleton)


def _versions(provenance: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    from flag_bench import __version__

    return {"flag_bench": provenance.get("flag_bench") or __version__, "torch": str(torch.__version__),
            "git_commit": provenance.get("git_commit"), "git_dirty": provenance.get("git_dirty"),
            "protocol_version": provenance.get("protocol_version"), "python": provenance.get("python")}


def model_json(task: CellTask, state_meta: Mapping[str, Any], panel_genes: Sequence[str],
               class_path: str, gene_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """model.json's content, less the file hashes."""
    cell, card = task.cell, task.method_cls.card
    prov = task.provenance or {}
    return {
        "format_version": FORMAT_VERSION,
        "method": cell.method, "class": class_path, "cell_id": cell.cell_id, "seed": int(cell.seed),
        "preset": cell.preset, "config_hash": cell.config_hash,
        "fitted_on": {"device": task.device, "device_name": prov.get("device_name")},
        "versions": _versions(prov),
        "genes": list(panel_genes), "n_genes": len(panel_genes), "panel": cell.panel,
        "gene_ids": None if gene_ids is None else [str(g) for g in gene_ids],
        "target_transform": cell.target_transform,
        "encoder": task.encoder, "encoder_identity": cell.encoder,
        "encoder_info": jsonable((task.protocol or {}).get("encoder_info") or {}),
        "patch": {"size_um": float(task.patch.size_um), "size_px": int(task.patch.size_px)},
        "needs": sorted(card.needs),
        "trained_on": {"dataset": cell.dataset, "dataset_spec": cell.dataset_spec,
                       "dataset_version": cell.dataset_version, "split": cell.split, "fold": cell.fold,
                       "train_slides": list(cell.fold_train), "val_slides": list(cell.fold_val)},
        "protocol_version": cell.protocol_version,
        "state": jsonable(state_meta),
    }


def save_model(method: Savable, out_dir: Path | str, *, task: CellTask, panel_genes: Sequence[str],
               gene_ids: Sequence[str] | None = None) -> Path:
    """Write fitted ``method`` (the cell ``task`` fitted, predicting ``panel_genes``) to
    ``out_dir`` as a saved-model folder, built under a temporary name beside it and renamed into
    place, so a crash leaves the previous folder or none, never half of one. ``method`` is the
    fitted method or, under --isolate, a stand-in holding the state the child sent back;
    ``gene_ids``: the panel genes' Ensembl ids where the dataset knows them."""
    from flag_bench.methods.common.state import class_path

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = method.save_state()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_state(state, tmp)
        config = {"method": task.cell.method, "preset": task.cell.preset,
                  "config": jsonable(dataclasses.asdict(task.config)), "overrides": jsonable(task.overrides)}
        _write_synced(tmp / CONFIG_JSON, _json_bytes(config))
        _write_synced(tmp / CARD_JSON, _json_bytes(jsonable(task.method_cls.card.to_dict())))
        info = model_json(task, state.meta, panel_genes, class_path(task.method_cls), gene_ids)
        info["files"] = {name: file_sha256(tmp / name) for name in FILES}
        _write_synced(tmp / MODEL_JSON, _json_bytes(info))
        os.chmod(tmp, 0o777 & ~_umask())
        fsync_dir(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an older ``out`` (a --force rerun) is moved aside first and
    removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- reading ---------------------------------------------------------------------------------
def read_model_json(model_dir: Path | str) -> dict[str, Any]:
    """model.json of ``model_dir``, its format checked."""
    folder = Path(model_dir)
    path = folder / MODEL_JSON
    if not path.is_file():
        raise UserError(f"{folder}: not a saved model (no {MODEL_JSON}); save one with "
                        "`flag-bench run ... --save-models`")
    info = _read_json(path)
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise UserError(f"{path}: format_version {version!r} "
                        + ("was written by a newer flag-bench; upgrade flag-bench to load it" if newer else
                           f"is not one this flag-bench reads ({FORMAT_VERSION})"))
    for key in ("method", "class", "cell_id", "genes", "files", "seed"):
        if key not in info:
            raise UserError(f"{path}: field '{key}' is missing; the folder is not a complete saved model")
    return info


def verify_files(model_dir: Path | str, info: Mapping[str, Any]) -> None:
    """Every file model.json lists has the sha256 it records (one line naming the first that
    does not), and every file a model needs is listed."""
    folder = Path(model_dir)
    files = info.get("files")
    if not isinstance(files, Mapping):
        raise UserError(f"{folder / MODEL_JSON}: field 'files' must map file names to sha256 sums")
    for name in FILES:
        if name not in files:
            raise UserError(f"{folder / MODEL_JSON}: lists no sha256 for {name}; the folder is not a complete saved model")
    for name, digest in files.items():
        if name not in FILES:
            raise UserError(f"{folder / MODEL_JSON}: lists {name!r}, which is not a file of a saved model")
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the saved model")
        if file_sha256(path) != digest:
            raise UserError(f"{path}: sha256 differs from the one model.json records: the file was changed or "
                            "damaged after the model was saved; copy the model folder again")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object")
    return obj


def _method_class(info: Mapping[str, Any], folder: Path) -> type[Method]:
    from flag_bench.methods.common.state import class_path

    name = str(info["method"])
    try:
        cls = resolve.method(name)
    except UserError as exc:
        raise UserError(f"{folder / MODEL_JSON}: method '{name}' is not available here ({exc})") from None
    if class_path(cls) != info["class"]:
        raise UserError(f"{folder / MODEL_JSON}: saved by class {info['class']}, but method '{name}' is "
                        f"{class_path(cls)} here; load it with the method (plugin) that saved it")
    return cls


def _config(cls: type[Method], folder: Path, method: str) -> Any:
    saved = _read_json(folder / CONFIG_JSON)
    where = f"{folder / CONFIG_JSON}"
    values = saved.get("config")
    if not isinstance(values, dict):
        raise UserError(f"{where}: field 'config' must be an object of the method's config values")
    if saved.get("method") != method:
        raise UserError(f"{where}: is the config of method {saved.get('method')!r}, model.json says {method!r}")
    preset = str(saved.get("preset") or "small")
    if preset not in cls.presets:  # a preset renamed since: every field is in the saved values anyway
        preset = next(iter(cls.presets))
    return cls.make_config(preset, values, source=where)


def load_model(model_dir: Path | str, *, device: str = "cpu") -> tuple[Method, ModelInfo]:
    """The fitted method saved in ``model_dir`` on ``device`` (auto, cpu, cuda[:N]) and what the
    model says about itself. Every file's sha256 is checked first; a changed file is one line
    naming it."""
    from flag_bench.methods.base import seed_everything

    folder = Path(model_dir)
    info = read_model_json(folder)
    verify_files(folder, info)
    cls = _method_class(info, folder)
    config = _config(cls, folder, str(info["method"]))
    saved_hash, now = info.get("config_hash"), cls.config_hash(config)
    if saved_hash and now != saved_hash:
        raise UserError(f"{folder / CONFIG_JSON}: rebuilds to config {now}, but the model was fitted with config "
                        f"{saved_hash} (method '{info['method']}' changed its config fields since); load it with "
                        f"flag-bench {(info.get('versions') or {}).get('flag_bench', '')} as it was saved")
    dev = resolve.device(device)
    state = read_state(folder, info.get("state") or {})
    seed = int(info["seed"])
    # what a cell sets before it builds a method (deterministic kernels, seeded global streams)
    seed_everything(seed)
    method = cls.from_state(state, config, seed=seed, device=dev)
    method.device = dev
    return method, model_info(info, folder)


def model_info(info: Mapping[str, Any], folder: Path | str = "") -> ModelInfo:
    patch = info.get("patch") or {}
    return ModelInfo(
        method=str(info["method"]), cell_id=str(info["cell_id"]), genes=tuple(str(g) for g in info["genes"]),
        target_transform=str(info.get("target_transform", "")), encoder=str(info.get("encoder", "")),
        encoder_info=dict(info.get("encoder_info") or {}), patch_um=float(patch.get("size_um", 0.0)),
        patch_px=int(patch.get("size_px", 0)), needs=frozenset(str(n) for n in info.get("needs", ())),
        trained_on=dict(info.get("trained_on") or {}), seed=int(info["seed"]), preset=str(info.get("preset", "")),
        encoder_identity=str(info.get("encoder_identity", "")),
        fitted_device=str((info.get("fitted_on") or {}).get("device", "")), model_dir=str(folder),
        versions=dict(info.get("versions") or {}),
        gene_ids=None if info.get("gene_ids") is None else tuple(str(g) for g in info["gene_ids"]),
    )


def find_model(results_dir: Path | str, cell_id_or_prefix: str) -> Path:
    """The model folder of the finished cell whose id is (or starts with) ``cell_id_or_prefix``."""
    root = Path(results_dir)
    cells = root / "cells"
    key = cell_id_or_prefix.strip()
    if not key:
        raise UserError("--model: give a cell id (or its first characters)")
    ids = sorted(p.stem for p in cells.glob(f"{key}*.json") if ".failed-" not in p.name
                 and not p.name.startswith(".")) if cells.is_dir() else []
    exact = [i for i in ids if i == key]
    ids = exact or ids
    if not ids:
        raise UserError(f"--model {key}: no finished cell of {root} has that id (ids are in {cells}/ and in "
                        "`flag-bench report` --format csv)")
    if len(ids) > 1:
        shown = ", ".join(i[:16] for i in ids[:4]) + (", ..." if len(ids) > 4 else "")
        raise UserError(f"--model {key}: {len(ids)} cells of {root} start with it ({shown}); give more characters")
    cell_id = ids[0]
    from flag_bench.store import ResultsStore

    store = ResultsStore(root)
    record = store.finished(cell_id)
    folder = store.artifact_dir(cell_id) / MODEL_DIR
    # the record decides: a folder left by an earlier --save-models run of a cell recomputed since
    # without the flag is not this record's model
    if record is None or MODEL_DIR not in record.artifacts or not (folder / MODEL_JSON).is_file():
        raise UserError(f"--model {key}: cell {cell_id} of {root} was computed without --save-models; rerun that "
                        "cell with `flag-bench run ... --save-models --force` to keep its model")
    return folder

