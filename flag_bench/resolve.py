"""Run-time resolution, in one place: a dataset spec to its loaded dataset, an encoder name to an
encoder, a panel spec to its selector, a method name to its class, a device name to a device.

The planner, the cells (in any worker), the `embed`/`cache`/`show` commands and the contract
check all resolve through here, so a name means the same object everywhere. ``datasets/`` never
imports the catalog: its callers hand it what was resolved here (docs/design.md).

Planning (``flag-bench run --dry-run``, ``flag-bench show``) asks for ``method(name, light=True)``:
for a built-in whose Config and presets have a torch-free home (``catalog.CONFIG_HOMES``) that is
a stand-in class with the method's own card, Config, presets and resource check, so configs,
their hashes and every planning error are the method's own, without importing torch.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, cast

from flag_bench.catalog import CONFIG_HOMES, DATASETS, ENCODERS, METHODS, PANELS, RegisteredEncoders
from flag_bench.errors import UserError
from flag_bench.spec import DatasetSpec, PanelSpec

if TYPE_CHECKING:  # the types only: importing them at run time would load numpy and scipy
    from flag_bench.datasets.base import SpatialDataset
    from flag_bench.datasets.encoders import Encoder
    from flag_bench.datasets.panels import PanelSelector
    from flag_bench.methods.base import Method


def _memo():
    from flag_bench.datasets.memo import ByteMemo

    # bounded in bytes (FLAG_BENCH_MEMO_BYTES), least recently used first; the dataset used last
    # always stays, so a dataset larger than the bound is not reloaded for every cell
    return ByteMemo("datasets", own_budget=True, keep_newest=True)


_DATASET_MEMO = _memo()


def dataset(spec: DatasetSpec | str, *, image_only: bool = False) -> SpatialDataset:
    """The dataset behind a spec, loaded once per process (cells of one dataset share it) while
    the memo's byte bound allows.

    ``image_only`` (``flag-bench predict``): the slides' images, spots and coordinates without
    counts (``SpatialDataset.image_only``); a loader without that mode (a plugin's) reads its
    counts and they are dropped."""
    spec = DatasetSpec.parse(spec)

    def load():
        loader = DATASETS.get(DATASETS.check(spec.name))
        native = image_only and _takes_image_only(loader)
        try:
            ds = loader(**spec.kwargs(), image_only=True) if native else loader(**spec.kwargs())
        except TypeError as exc:
            raise UserError(f"--datasets {spec.key}: {exc}") from None
        if image_only and not native:
            from flag_bench.datasets.base import drop_counts

            ds = drop_counts(ds)
        return ds

    # the two modes serve different things, so never one for the other
    return _DATASET_MEMO.get_or_compute(_dataset_key(spec, image_only), load)


def _dataset_key(spec: DatasetSpec, image_only: bool):
    return (spec.key, "image-only") if image_only else spec.key


def forget_dataset(spec: DatasetSpec | str) -> None:
    """Drop this process's memo of a dataset (both modes), so the next ``dataset`` reads its files
    as they are now (``flag-bench reproduce`` checks the content version of the files on disk)."""
    spec = DatasetSpec.parse(spec)
    for image_only in (False, True):
        _DATASET_MEMO.pop(_dataset_key(spec, image_only), None)


def _takes_image_only(loader) -> bool:
    """Whether a loader declares the ``image_only`` keyword (every built-in does)."""
    import inspect

    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("image_only")
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)


def encoder_resolver() -> RegisteredEncoders:
    """The resolver handed to methods (``SlideImage.embeddings``). It lives in the catalog, not
    here: this module's globals hold the dataset memo, which nothing a method holds may lead to
    (docs/threat-model.md)."""
    return RegisteredEncoders()


def encoder(name: str) -> Encoder:
    """A fresh encoder of registered ``name`` (built free; weights load on first use)."""
    return encoder_resolver()(name)


def encoder_names() -> tuple[str, ...]:
    """Every registered encoder name (plugins included), without building any."""
    return tuple(ENCODERS.names())


def panel_selector(spec: PanelSpec | str) -> PanelSelector:
    """The registered selector behind a panel spec (plugins included)."""
    from flag_bench.datasets import panels

    parsed: PanelSpec = PanelSpec.parse(spec)
    return panels.make_selector(parsed, PANELS.get(PANELS.check(parsed.kind)))


def method(name: str, *, light: bool = False) -> type[Method]:
    """The class of method ``name``; with ``light``, a torch-free planning stand-in where the
    built-in has a config home (``catalog.CONFIG_HOMES``), else the class itself."""
    METHODS.check(name)
    if light and name in CONFIG_HOMES and METHODS.origin(name) == "built-in":
        return _stand_in(name)
    return METHODS.get(name)


@functools.lru_cache(maxsize=None)
def _stand_in(name: str) -> type[Method]:
    from flag_bench.methods.base import Method

    module, _, attr = CONFIG_HOMES[name].partition(":")
    home = getattr(importlib.import_module(module), attr)[name]
    attrs: dict[str, Any] = {
        "card": METHODS.describe(name, "card"), "Config": home.Config, "presets": home.presets,
        "__module__": __name__, "__doc__": f"Planning stand-in of method '{name}': configs only, never fitted.",
    }
    if home.check_resources is not None:
        attrs["check_resources"] = classmethod(lambda cls, config: home.check_resources(config))
    # Method's fit/predict stay abstract: a stand-in cannot be instantiated by mistake
    return cast("type[Method]", type(f"Planned_{name.replace('-', '_')}", (Method,), attrs))


# device nodes a CUDA (NVIDIA) or ROCm (AMD, torch.cuda too) device needs; without any, torch
# cannot see a GPU, so "auto" is the CPU and torch need not be imported to say so
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def device(name: str) -> str:
    """The device a run on ``name`` (auto, cpu, cuda[:N], mps) uses, as ``methods.base.resolve_device``
    says; "cpu", and "auto" on a Linux or macOS machine without GPU device nodes, without torch."""
    if name == "cpu":
        return "cpu"
    no_gpu = sys.platform == "darwin" or (sys.platform.startswith("linux") and not any(map(os.path.exists, _GPU_NODES)))
    if name == "auto" and no_gpu:
        return "cpu"
    from flag_bench.methods.base import resolve_device  # lazy: imports torch

    return resolve_device(name)
