"""Reading model weights a user gives (or a package ships): the one place flag-bench opens them.

A ``.safetensors`` file is read with the ``safetensors`` package: a header and raw tensors, no
code runs, on any torch. Anything else (``.pt``, ``.pth``, ``.bin``, ``.ckpt``: a pickle inside a
zip) goes through ``torch.load(weights_only=True)``, which is a safety boundary only on a torch
that has the fixes for CVE-2025-32434 (before 2.6, a crafted file runs code even with
``weights_only=True``) and CVE-2026-24747 (advisories name versions before 2.10). On an older
torch such a file is refused, before it is opened, with a one-line error naming it and the fix;
``pyproject.toml`` requires the same floor, so only an environment that overrode it meets this.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flag_bench.errors import UserError

# keep in step with the torch floor in pyproject.toml (tests/test_safeload.py checks both)
MIN_TORCH = (2, 10)
SAFETENSORS = ".safetensors"


def torch_version() -> tuple[int, int]:
    """(major, minor) of the installed torch; (0, 0) when the version string cannot be read."""
    import torch

    m = re.match(r"\s*(\d+)\.(\d+)", str(torch.__version__))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def require_safe_torch(path: Path | str) -> None:
    """UserError unless this torch's ``weights_only`` loader is a safe boundary for ``path``."""
    have = torch_version()
    if have < MIN_TORCH:
        import torch

        need = ".".join(map(str, MIN_TORCH))
        raise UserError(
            f"{path}: a pickled checkpoint (.pt/.pth/.bin/.ckpt) is read only with torch >= {need} "
            f"(torch {torch.__version__} can run code hidden in it: CVE-2025-32434, CVE-2026-24747); "
            f"pip install 'torch>={need}', or convert the file to {SAFETENSORS}")


def load_weights(path: Path | str) -> Any:
    """The tensors of a weights file, on the CPU: ``.safetensors`` through the safetensors package
    (a flat dict of tensors), anything else through ``torch.load(weights_only=True)`` on a torch
    new enough for that to be safe (``require_safe_torch``). Errors reading the file itself
    propagate to the caller, which knows what the file should hold."""
    path = Path(path)
    if path.suffix.lower() == SAFETENSORS:
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - an install dependency
            raise UserError(f"{path}: reading {SAFETENSORS} files needs the safetensors package; "
                            "pip install safetensors") from None
        return load_file(str(path), device="cpu")
    require_safe_torch(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
