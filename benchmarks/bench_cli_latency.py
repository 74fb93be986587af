"""Latency of the planning commands a user waits on: `flag-bench run --dry-run` on the default grid
(no options: her2st-mini, the default methods) and `flag-bench show flag`, each the median wall time
of ``--runs`` fresh processes (imports included: that is what a user waits for) against its target
(issue 24: 1 s and 0.5 s). Run it on an otherwise idle machine; the dry run reads her2st-mini and
the embedding cache and writes nothing (it runs in a temporary folder).

    python benchmarks/bench_cli_latency.py [--runs 11]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

# command -> target median seconds
COMMANDS: dict[tuple[str, ...], float] = {
    ("run", "--dry-run"): 1.0,
    ("show", "flag"): 0.5,
}


def wall_times(args: tuple[str, ...], runs: int, cwd: str) -> list[float]:
    """Seconds of ``runs`` fresh `flag-bench ARGS` processes, one after the other."""
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flag_bench.cli", *args], cwd=cwd, capture_output=True,
                              text=True)
        out.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise SystemExit(f"flag-bench {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=11, help="processes per command (the median is reported)")
    args = ap.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be >= 1")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for cmd, target in COMMANDS.items():
            times = wall_times(cmd, args.runs, tmp)
            median = statistics.median(times)
            verdict = "ok" if median <= target else "OVER"
            ok &= median <= target
            print(f"flag-bench {' '.join(cmd):<18} median {median:6.3f} s  (min {min(times):.3f}, "
                  f"max {max(times):.3f}, {args.runs} runs)  target {target:g} s  {verdict}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
