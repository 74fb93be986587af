"""What a cell costs and where it ran: peak memory, device sync, provenance."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from flag_bench import PROTOCOL_VERSION, __version__

_PACKAGES = ("torch", "torch-geometric", "numpy", "scipy", "scikit-learn", "anndata", "mlflow", "pandas")


class PeakRSS:
    """Samples this process's RSS every 20 ms on a thread; ``peak_mb`` after exit."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime maximum
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def sync(device: str) -> None:
    """Wait for queued GPU work so wall times measure the work, not its launch."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _git(src: Path) -> tuple[str | None, bool | None]:
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
        if not commit:
            return None, None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def provenance(device: str) -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    vers: dict[str, str | None] = {}
    for pkg in _PACKAGES:
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    commit, dirty = _git(Path(__file__).resolve().parent.parent)
    dev_name = device
    if device.startswith("cuda"):
        import torch

        dev_name = torch.cuda.get_device_name(torch.device(device))
    return {
        "flag_bench": __version__, "protocol_version": PROTOCOL_VERSION, "git_commit": commit,
        "git_dirty": dirty, "python": platform.python_version(), "platform": platform.platform(),
        "packages": vers, "device": device, "device_name": dev_name,
        # with device_name, the hardware a merged leaderboard compares (BLAS kernels differ by CPU);
        # records written before it lack the key
        "cpu_model": cpu_model(),
    }


def cpu_model() -> str | None:
    """This machine's CPU model ("AMD EPYC 7763 64-Core Processor"), None where it cannot be told."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_models() -> list[str]:
    """The model of each CUDA device torch sees (empty without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
