"""Everything reachable from an object, following references a method could follow, and where
that leads to a test slide's expression (the contract's leak walk; tests/test_method_contract.py
also runs it against views built to leak, a test of the walker itself).

What it follows: containers, instance attributes and slots, closures, defaults, bound selves,
weak references, and the module globals (``__globals__``) of every function object it meets, so
a resolver or reader handed to a method cannot lead through its module to the harness's
process-wide memos. What it flags: a Slide or SpatialDataset, an array equal to (or sharing
memory with) a test slide's counts or targets, a ``ByteMemo`` (the harness's process-wide
memos: loaded datasets, fold builders, fold expression), a module-level mapping named like a
memo or cache, and a path (str or Path) to a file the dataset declares holds counts. What it does
not follow: the code of classes (a method's own class functions lead to every module by
import), frames, ``gc``, ``sys.modules``: code that goes looking there is adversarial, which
the contract does not claim to catch (docs/threat-model.md)."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
import types
import warnings
import weakref
from collections.abc import Mapping
from pathlib import PurePath

import numpy as np
import scipy.sparse as sp

from flag_bench.datasets.base import Slide, SpatialDataset
from flag_bench.datasets.memo import ByteMemo

_ATOMS = (str, bytes, int, float, complex, bool, type(None), np.generic, types.ModuleType, type)
_MEMO_NAME = re.compile(r"memo|cache", re.IGNORECASE)
GLOBALS = "__globals__"


def _module_globals(obj) -> bool:
    """Whether ``obj`` is a module's globals dict (what a function's ``__globals__`` is)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("__name__"), str):
        return False
    return getattr(sys.modules.get(obj["__name__"]), "__dict__", None) is obj


def _children(obj) -> list[tuple[str, object]]:
    try:
        return _referents(obj)
    except Exception:  # an object whose attributes cannot be read leads nowhere we can follow
        return []


def _referents(obj) -> list[tuple[str, object]]:
    """(label, referent) pairs: containers, attributes, closures, defaults, bound selves, module
    globals of functions (one label per global name; dunder names left out), weak referents."""
    if _module_globals(obj):
        return [(k, v) for k, v in obj.items() if not (k.startswith("__") and k.endswith("__"))]
    if isinstance(obj, weakref.ref):
        target = obj()
        return [("()", target)] if target is not None else []
    if isinstance(obj, np.ndarray):
        kids: list[tuple[str, object]] = [("base", obj.base)] if obj.base is not None else []
        return kids + ([(f"[{i}]", v) for i, v in enumerate(obj.ravel())] if obj.dtype == object else [])
    if sp.issparse(obj):
        return []
    if isinstance(obj, Mapping):
        return [(f"key {k!r}", k) for k in obj] + [(f"[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, functools.partial):
        return [("func", obj.func), ("args", obj.args), ("keywords", obj.keywords)]
    if isinstance(obj, types.FunctionType):
        cells: list[tuple[str, object]] = [(f"closure {n}", c.cell_contents) for n, c in
                 zip(obj.__code__.co_freevars, obj.__closure__ or ()) if c.cell_contents is not None]
        return cells + [("__defaults__", obj.__defaults__), ("__kwdefaults__", obj.__kwdefaults__),
                        (GLOBALS, obj.__globals__)] + list(obj.__dict__.items())
    kids = []
    if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
        kids += [("__self__", obj.__self__), ("__func__", getattr(obj, "__func__", None))]
    if dataclasses.is_dataclass(obj):
        kids += [(f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj)]
    kids += [(k, v) for k, v in getattr(obj, "__dict__", {}).items()]
    for klass in type(obj).__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if hasattr(obj, slot):
                kids.append((slot, getattr(obj, slot)))
    return kids


def _walk(root, name="test"):
    """Yield (path, object) for everything reachable from ``root`` (each object once; strings and
    paths, leaves, each time they are met)."""
    seen: dict[int, object] = {}  # holds the objects so ids stay unique during the walk
    stack = [(name, root)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, (str, PurePath)):
            yield path, obj
            continue
        if isinstance(obj, _ATOMS) or id(obj) in seen:
            continue
        seen[id(obj)] = obj
        yield path, obj
        stack.extend((f"{path}.{label}", kid) for label, kid in _children(obj))


def _forbidden(ds: SpatialDataset, views) -> list[tuple[str, object]]:
    """The test slides' raw counts (whole pool, sparse and dense; panel columns) and targets."""
    out = []
    for s, truth in zip(views.test.slides, views.truths):
        counts = ds.slide(s.slide_id).counts
        panel = counts[:, np.asarray(views.panel.index)].toarray()
        out += [(f"{s.slide_id} counts", counts), (f"{s.slide_id} dense counts", counts.toarray()),
                (f"{s.slide_id} counts data", counts.data), (f"{s.slide_id} panel counts", panel),
                (f"{s.slide_id} targets", truth), (f"{s.slide_id} log1p", np.log1p(panel).astype(np.float32))]
    return out


def _same(obj, bad) -> bool:
    if sp.issparse(bad):
        if sp.issparse(obj):
            return obj.shape == bad.shape and (obj != bad).nnz == 0
        return False
    if sp.issparse(obj):
        obj = obj.toarray()
    if not isinstance(obj, np.ndarray) or obj.dtype == object:
        return False
    return np.may_share_memory(obj, bad) or (obj.shape == bad.shape and np.array_equal(obj, bad))


def count_files(ds: SpatialDataset) -> set[str]:
    """Real paths of the files the dataset declares hold expression: ``meta['data_file']`` (one
    file holding everything, as her2st-mini's), ``meta['count_files']``, and each slide's
    ``meta['counts_file']`` / ``meta['st_file']``."""
    named = [ds.meta.get("data_file"), *(ds.meta.get("count_files") or ())]
    for s in ds.slides:
        named += [s.meta.get("counts_file"), s.meta.get("st_file")]
    return {os.path.realpath(str(f)) for f in named if f}


def _names_file(text, files: set[str], basenames: set[str]) -> str | None:
    text = os.fspath(text)
    if not text or os.path.basename(text.rstrip("/")) not in basenames:
        return None
    real = os.path.realpath(text)
    return real if real in files else None


def _memo(path: str, obj) -> str | None:
    if isinstance(obj, ByteMemo):
        return f"{path} is a process-wide memo ('{obj.name}')"
    head, _, name = path.rpartition(".")
    if head.endswith(GLOBALS) and _MEMO_NAME.search(name) and isinstance(obj, (Mapping, list)):
        return f"{path} is a module-level memo"
    return None


def leaks(ds: SpatialDataset, views, root=None) -> list[str]:
    """Paths from TestData (or ``root``) to the test slides' expression, to the harness's memos,
    or to a file holding the dataset's counts."""
    bad = _forbidden(ds, views)
    files = count_files(ds)
    basenames = {os.path.basename(f) for f in files}
    found: list[str] = []
    with warnings.catch_warnings():  # reading a deprecated attribute of a library warns; it is only read
        warnings.simplefilter("ignore")
        for path, obj in _walk(views.test if root is None else root):
            _check(path, obj, bad, files, basenames, found)
    return found


def _check(path: str, obj, bad, files: set[str], basenames: set[str], found: list[str]) -> None:
    if isinstance(obj, (str, PurePath)):
        if files and (hit := _names_file(obj, files, basenames)):
            found.append(f"{path} is the path of {hit}, which holds the dataset's counts")
        return
    if isinstance(obj, (Slide, SpatialDataset)):
        found.append(f"{path} is a {type(obj).__name__}")
    if (memo := _memo(path, obj)) is not None:
        found.append(memo)
    found += [f"{path} is {what}" for what, b in bad if _same(obj, b)]
