"""In-process memos bounded by bytes: one least-recently-used budget shared by every memo.

Embeddings, per-slide fold expression and loaded datasets are memoised so a worker that runs many
cells pays for them once; without a bound a long grid over many slides, encoders and patches grows
until the process is killed. Every ``ByteMemo`` draws on one budget (``FLAG_BENCH_MEMO_BYTES``,
default 2 GiB; a plain number of bytes or a size such as ``512MiB``, ``4GB``; 0 keeps nothing):
when an insertion takes the total over it, the entries used longest ago, whichever memo holds
them, are forgotten. An entry larger than the whole budget is returned but not kept. Forgetting
only costs a recomputation (or a read of the disk cache): a memo never changes a result. Loaded
datasets (``plan._DATASET_MEMO``, ``cell._BUILDERS``) get budgets of their own, the same size,
and always keep the one used last: reloading the dataset in use for every cell would cost more
than it frees.

The harness's memos live here, not in the harness, because ``datasets`` must not import it.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator

import numpy as np

ENV = "FLAG_BENCH_MEMO_BYTES"
DEFAULT_BYTES = 2 << 30

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 1 << 10, "m": 10**6, "mb": 10**6, "mib": 1 << 20,
          "g": 10**9, "gb": 10**9, "gib": 1 << 30, "t": 10**12, "tb": 10**12, "tib": 1 << 40}
_LOCK = threading.RLock()
_SERIAL = [0]
_WARNED: set[str] = set()


class _Pool:
    """Entries of the memos sharing one budget, least recently used first."""

    def __init__(self) -> None:
        self.order: "OrderedDict[tuple[int, Hashable], int]" = OrderedDict()  # (memo serial, key) -> bytes
        self.memos: "dict[int, weakref.ref[ByteMemo]]" = {}
        self.total = 0

    def evict(self, bound: int, keep: int = 0) -> None:
        """Forget the oldest entries until the total is within ``bound`` (the newest ``keep`` stay)."""
        while self.total > bound and len(self.order) > keep:
            (serial, key), size = self.order.popitem(last=False)
            self.total -= size
            ref = self.memos.get(serial)
            memo = ref() if ref is not None else None
            if memo is not None:
                memo._data.pop(key, None)

    def forget(self, serial: int) -> None:
        with _LOCK:
            self.memos.pop(serial, None)
            for k in [k for k in self.order if k[0] == serial]:
                self.total -= self.order.pop(k)


_SHARED = _Pool()


def parse_bytes(text: str) -> int:
    """'2147483648', '512MiB', '4 GB', '1.5g' -> bytes; ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 2147483648, 512MiB, 4GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def budget_bytes() -> int:
    """The shared bound, read from ``FLAG_BENCH_MEMO_BYTES`` at each insertion (a bad value warns
    once and the default applies)."""
    text = os.environ.get(ENV)
    if text is None or not text.strip():
        return DEFAULT_BYTES
    try:
        return parse_bytes(text)
    except ValueError as exc:
        if text not in _WARNED:
            _WARNED.add(text)
            warnings.warn(f"{ENV}: {exc}; using the default {DEFAULT_BYTES} bytes", stacklevel=3)
        return DEFAULT_BYTES


def nbytes(value: Any, _seen: set[int] | None = None) -> int:
    """Memory a memoised value holds: arrays (sparse ones too) by their buffers, containers and
    dataclass-like objects by their contents (each object counted once)."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        base = value.base if isinstance(value.base, np.ndarray) else None
        return 0 if base is not None and id(base) in seen else int(value.nbytes)
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return sys.getsizeof(value)
    sparse = [getattr(value, a, None) for a in ("data", "indices", "indptr")]
    if all(isinstance(a, np.ndarray) for a in sparse):
        return sum(nbytes(a, seen) for a in sparse)
    if isinstance(value, dict) or hasattr(value, "items") and callable(value.items):
        try:
            return sum(nbytes(k, seen) + nbytes(v, seen) for k, v in value.items())
        except Exception:
            return 0
    if isinstance(value, (tuple, list, set, frozenset)):
        return sum(nbytes(v, seen) for v in value)
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):
        return sum(nbytes(v, seen) for v in fields.values())
    return sys.getsizeof(value)


def total_bytes() -> int:
    """Bytes held by the memos sharing the budget."""
    return _SHARED.total


class ByteMemo:
    """A dict-like memo whose entries count against a byte budget (see the module doc).

    ``in`` does not change the order; a hit through ``get`` or ``[]`` marks the entry used.
    ``put(key, value)`` stores and returns ``value`` (kept or not), so a caller never has to read
    back what it just stored. ``size`` measures a value (default ``nbytes``). By default the memo
    shares the process's budget; ``own_budget=True`` gives it a budget of its own (the same
    size), and ``keep_newest`` keeps the entry used last even over the budget (a loaded dataset:
    reloading the one in use for every cell would cost far more than it frees).
    """

    def __init__(self, name: str = "", size: Callable[[Any], int] = nbytes, *, own_budget: bool = False,
                 keep_newest: bool = False):
        self.name = name
        self._size = size
        self._keep = 1 if keep_newest else 0
        self._pool = _Pool() if own_budget else _SHARED
        self._data: dict[Hashable, Any] = {}
        with _LOCK:
            _SERIAL[0] += 1
            self._serial = _SERIAL[0]
            self._pool.memos[self._serial] = weakref.ref(self)
        weakref.finalize(self, self._pool.forget, self._serial)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._data))

    def __getitem__(self, key: Hashable) -> Any:
        with _LOCK:
            value = self._data[key]
            self._pool.order.move_to_end((self._serial, key))
            return value

    def get(self, key: Hashable, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def put(self, key: Hashable, value: Any) -> Any:
        size = int(self._size(value))
        with _LOCK:
            self._drop(key)
            bound = budget_bytes()
            if size > bound and not self._keep:
                return value
            self._data[key] = value
            self._pool.order[(self._serial, key)] = size
            self._pool.total += size
            self._pool.evict(bound, self._keep)
        return value

    __setitem__ = put

    def get_or_compute(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value under ``key``, else ``make()`` stored (while the budget allows) and returned."""
        hit = self.get(key)
        return hit if hit is not None else self.put(key, make())

    def __delitem__(self, key: Hashable) -> None:
        with _LOCK:
            if key not in self._data:
                raise KeyError(key)
            self._drop(key)

    def pop(self, key: Hashable, default: Any = None) -> Any:
        with _LOCK:
            value = self._data.get(key, default)
            self._drop(key)
            return value

    def clear(self) -> None:
        with _LOCK:
            for key in list(self._data):
                self._drop(key)

    @property
    def nbytes(self) -> int:
        with _LOCK:
            return sum(self._pool.order.get((self._serial, k), 0) for k in self._data)

    def _drop(self, key: Hashable) -> None:
        if key in self._data:
            del self._data[key]
            self._pool.total -= self._pool.order.pop((self._serial, key), 0)

    def __repr__(self) -> str:
        return f"ByteMemo({self.name!r}, {len(self)} entries, {self.nbytes} bytes)"
