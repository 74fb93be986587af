"""Stable short hashes of JSON-able values (cell ids, config hashes, panel ids)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks; never memoised (a manifest check must
    read what is on disk now: datasets.encoders.file_sha256 memoises on size and mtime for weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def short_hash(value: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:n]
