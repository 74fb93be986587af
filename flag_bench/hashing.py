"""Stable short hashes of JSON-able values (cell ids, config hashes, panel ids)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "tolist"):  # numpy scalars / arrays
        return o.tolist()
    raise TypeError(f"not hashable as JSON: {type(o).__name__}")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default)


def short_hash(value: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:n]
