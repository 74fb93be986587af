"""Weights of the foundation-model encoders (datasets/fm_encoders.py): where the file is (the
``FLAG_BENCH_<NAME>_WEIGHTS`` variable, else the local Hugging Face cache; nothing is downloaded),
and reading it into a model with ``load_state_dict(strict=True)`` semantics, every mismatch a
one-line error naming the file, the model and the first such key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from flag_bench.datasets.fm_table import FMSpec
from flag_bench.errors import UserError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def hf_hub_dir() -> Path:
    """The Hugging Face hub cache folder, resolved as huggingface_hub does (read-only use)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _from_hf_cache(spec: FMSpec) -> Path | None:
    repo = hf_hub_dir() / ("models--" + spec.hf_repo.replace("/", "--"))
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return None
    ref = repo / "refs" / "main"
    order: list[Path] = []
    if ref.is_file():
        order.append(snaps / ref.read_text().strip())
    # other snapshots newest first: a pinned revision without refs/main still counts
    others = sorted((p for p in snaps.iterdir() if p.is_dir() and p not in order),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in order + others:
        for fname in spec.weight_files:
            f = snap / fname
            if f.is_file():  # follows the blob symlink
                return f
    return None


def resolve_weights(spec: FMSpec) -> Path:
    """The weights file of ``spec``: the env var's path, else the local HF cache; else UserError."""
    env = spec.env_var
    given = os.environ.get(env)
    files = " or ".join(spec.weight_files)
    if given:
        p = Path(given).expanduser()
        if p.is_dir():
            for fname in spec.weight_files:
                if (p / fname).is_file():
                    return p / fname
            raise UserError(f"{env}={given}: the folder holds no {files}; point {env} to the weights file of "
                            f"{spec.hf_repo}")
        if not p.is_file():
            raise UserError(f"{env}={given}: no such file; point {env} to the {files} of {spec.hf_repo}")
        if p.suffix not in _WEIGHT_SUFFIXES:
            raise UserError(f"{env}={given}: weights must be .safetensors, .bin, .pth or .pt; point {env} to the "
                            f"{files} of {spec.hf_repo}")
        return p
    found = _from_hf_cache(spec)
    if found is not None:
        return found
    raise UserError(f"encoder {spec.name}: no weights found; set {env} to the {files} of the Hugging Face repo "
                    f"{spec.hf_repo} (gated: accept its terms there), or place that repo's snapshot in the local "
                    f"Hugging Face cache ({hf_hub_dir()}); nothing is downloaded")


# -- loading ---------------------------------------------------------------------------------------

def read_state_dict(path: Path) -> dict:
    from flag_bench.safeload import load_weights

    try:
        sd = load_weights(path)  # .safetensors, or torch.load(weights_only=True) on a safe torch
    except UserError:
        raise  # a pickled file on a torch too old to read it safely: already names the file and fix
    except Exception as exc:  # a truncated or foreign file: say which, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read it as a weights file ({first[:160]}); give the .safetensors or "
                        ".bin file of the model's Hugging Face repo") from None
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise UserError(f"{path}: not a flat state dict of tensors; give the .safetensors or .bin file of the "
                        "model's Hugging Face repo")
    return sd


def first_mismatch(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str | None:
    """The first key (in the model's order) that strict loading would reject, described; None if all fit."""
    for k, v in expected.items():
        if k not in got:
            return f"key '{k}' is missing from the file"
        if tuple(got[k].shape) != tuple(v.shape):
            return f"key '{k}' has shape {tuple(got[k].shape)} in the file, {tuple(v.shape)} in the model"
    for k in got:
        if k not in expected:
            return f"key '{k}' in the file is not in the model"
    return None


def load_weights(spec: FMSpec, model, path: Path) -> None:
    sd = read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith(spec.ignore_prefixes)}
    problem = first_mismatch(model.state_dict(), sd)
    if problem:
        raise UserError(f"{path}: not weights of encoder {spec.name} ({spec.title}, {spec.arch}): {problem}; "
                        f"point {spec.env_var} to the weights of {spec.hf_repo}")
    model.load_state_dict(sd, strict=True)
