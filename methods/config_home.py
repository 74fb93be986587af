"""A built-in method's Config class, presets and resource check, importable without torch.

The method class reads its ``Config``, ``presets`` and ``check_resources`` from here, so they live
once; ``flag-bench run --dry-run`` and ``flag-bench show`` plan with them (``flag_bench.resolve``)
without importing the torch implementation. Registered in ``catalog.CONFIG_HOMES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class ConfigHome:
    Config: type
    presets: Mapping[str, Mapping[str, Any]]
    # raises a one-line UserError when a config names files that are not there (None: nothing to check)
    check_resources: Callable[[Any], None] | None = None
