"""Everything reachable from an object, following references a method could follow, and where
that leads to a test slide's expression (the contract's leak walk; tests/test_method_contract.py
also runs it against views built to leak, a test of the walker itself)."""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from flag_bench.datasets.base import Slide, SpatialDataset

_ATOMS = (str, bytes, int, float, complex, bool, type(None), np.generic, types.ModuleType, type)


def _children(obj) -> list[tuple[str, object]]:
    """(label, referent) pairs: containers, attributes, closures, defaults, bound selves."""
    if isinstance(obj, np.ndarray):
        kids = [("base", obj.base)] if obj.base is not None else []
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
        cells = [(f"closure {n}", c.cell_contents) for n, c in
                 zip(obj.__code__.co_freevars, obj.__closure__ or ()) if c.cell_contents is not None]
        return cells + [("__defaults__", obj.__defaults__), ("__kwdefaults__", obj.__kwdefaults__)]
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
    """Yield (path, object) for everything reachable from ``root`` (each object once)."""
    seen: dict[int, object] = {}  # holds the objects so ids stay unique during the walk
    stack = [(name, root)]
    while stack:
        path, obj = stack.pop()
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


def leaks(ds: SpatialDataset, views, root=None) -> list[str]:
    """Paths from TestData (or ``root``) to the test slides' expression."""
    bad = _forbidden(ds, views)
    found = []
    for path, obj in _walk(views.test if root is None else root):
        if isinstance(obj, (Slide, SpatialDataset)):
            found.append(f"{path} is a {type(obj).__name__}")
        found += [f"{path} is {what}" for what, b in bad if _same(obj, b)]
    return found
