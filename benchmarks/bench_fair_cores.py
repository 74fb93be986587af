"""Fair sharing of CPU cores (issue 23, item 4): today's code (a git ref, default HEAD) against the
working tree, on the issue's own command

    flag-bench run --datasets her2st-mini --methods triplex,stflow --folds F --preset small --device cpu

in three situations, for each code version:

  (a) alone: one run (fold 0);
  (b) two at once: two runs started together (folds 0 and 1, separate results dirs);
  (c) beside a two-thread numpy loop: one run (fold 0) while another process multiplies
      1024 x 1024 matrices on two BLAS threads the whole time.

It prints every wall time (whole `flag-bench run` processes, start to exit, as the issue measured
them), the cells' fit seconds, threads and contended marks (the working tree records them), and
the ratios with the acceptance of issue 23:

  - two concurrent runs each within 2.4x of one alone (the tree; today: 124 s vs 32 s = 3.9x);
  - the tree's lone run at most 10% slower than today's (OMP_WAIT_POLICY=PASSIVE made it 45% slower).

    python benchmarks/bench_fair_cores.py [--ref HEAD] [--versions ref,tree] [--repeat 1]
        [--situations a,b,c]
        [--variant NAME:VAR=VALUE[,VAR=VALUE]]...

``--variant`` adds a run of the working tree with extra environment variables, to try another wait
policy or switch the load-sized threads off, e.g. ``--variant spin10k:GOMP_SPINCOUNT=10000`` or
``--variant fixed:FLAG_BENCH_ADAPT_THREADS=0`` (each adds about 3 minutes).

How the versions run (setup, not timed): the ref is extracted with ``git archive <ref>`` and the
working tree copied (a snapshot: edits made while this runs do not leak in), each laid out as the
installed package (pyproject.toml's package-dir: flag_bench/ with datasets/, methods/, metrics/
and leaderboard/ as its sub-packages) in a temp dir that goes first on PYTHONPATH (it precedes the
editable install's finder); each run is ``python -m flag_bench.cli run ...`` from a temp cwd, with
every thread and wait variable (OMP_NUM_THREADS, OMP_WAIT_POLICY, GOMP_SPINCOUNT, ...) removed from
its environment so the code under test decides. All runs share one embedding cache
(FLAG_BENCH_CACHE in the temp dir), warmed first by one `mean` run per version (untimed), so no
timed run encodes patches; every run writes a fresh results dir (records and mlflow.db).

Run it on a quiet machine (it prints the load average first and warns above 0.5). Expected
duration on the 2-core CPU of the issue, defaults: about 8-10 minutes (warm-up ~1.5 min; the ref
~5 min, as issue 23 measured: 32 + 124 + 129 s; the tree ~2.5 min if it meets the acceptance).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STRIP_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
             "KMP_BLOCKTIME", "KMP_LIBRARY", "OPENBLAS_THREAD_TIMEOUT", "FLAG_BENCH_ADAPT_THREADS",
             "SLURM_CPUS_PER_TASK", "PYTHONPATH")
NUMPY_LOOP = """
import numpy as np
a = np.random.default_rng(0).standard_normal((1024, 1024))
while True:
    a = np.tanh(a @ a.T / 1024.0)
"""


# -- the code versions --------------------------------------------------------------------------
def package_dirs(src: Path) -> dict[str, str]:
    import tomllib

    cfg = tomllib.loads((src / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["package-dir"]


def lay_out(src: Path, site: Path) -> Path:
    """``src`` (a checkout) as the installed package under ``site``: every package-dir mapping."""
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for pkg, folder in sorted(package_dirs(src).items(), key=lambda kv: kv[0].count(".")):
        shutil.copytree(src / folder, site.joinpath(*pkg.split(".")), ignore=junk, dirs_exist_ok=True)
    return site


def from_ref(ref: str, dest: Path) -> Path:
    src = dest / "src"
    src.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as tf:
        tf.extractall(src)
    return lay_out(src, dest / "site")


def from_tree(dest: Path) -> Path:
    return lay_out(ROOT, dest / "site")


# -- runs ---------------------------------------------------------------------------------------
class Version:
    def __init__(self, name: str, site: Path, extra_env: dict[str, str], work: Path):
        self.name, self.site, self.extra_env, self.work = name, site, extra_env, work

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in STRIP_ENV}
        env.update(PYTHONPATH=str(self.site), FLAG_BENCH_CACHE=str(self.work / "embed-cache"), **self.extra_env)
        return env

    def start(self, tag: str, fold: int, methods: str) -> tuple[subprocess.Popen, Path, float]:
        rd = self.work / "results" / f"{self.name}-{tag}-fold{fold}-{time.monotonic_ns()}"
        cmd = [sys.executable, "-m", "flag_bench.cli", "run", "--datasets", "her2st-mini", "--methods", methods,
               "--folds", str(fold), "--preset", "small", "--device", "cpu", "--results-dir", str(rd), "--no-progress"]
        rd.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path(rd), "w") as log:  # the child keeps its own copy of the descriptor
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=self.env(), cwd=self.work, stdout=log, stderr=subprocess.STDOUT)
        return proc, rd, t0


def log_path(rd: Path) -> Path:
    return rd.parent / f"{rd.name}.log"


def finish(proc: subprocess.Popen, rd: Path, t0: float) -> dict:
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"run into {rd} failed (exit {rc}); its output:\n{log_path(rd).read_text()[-3000:]}")
    cells = []
    for f in sorted((rd / "cells").glob("*.json")):
        rec = json.loads(f.read_text())
        c = rec.get("costs", {})
        cells.append({"method": rec["cell"]["method"], "status": rec["status"], "fit": c.get("fit_seconds"),
                      "threads": c.get("torch_threads"), "contended": c.get("contended"),
                      "others": c.get("others_cpu"), "cpu": c.get("cpu_seconds")})
    return {"wall": wall, "cells": cells}


def describe(label: str, r: dict) -> str:
    parts = []
    for c in r["cells"]:
        txt = (f"{c['method']} fit {c['fit']:.1f}s x{c['threads']}" if c["fit"] is not None
               else f"{c['method']} {c['status']}")
        if c["contended"] is not None:
            others = f", others {c['others']:.2f} cores" if c["others"] is not None else ""
            txt += f" ({'contended' if c['contended'] else 'quiet'}{others})"
        parts.append(txt)
    return f"  {label:<34} {r['wall']:7.1f} s   " + "; ".join(parts)


def alone(v: Version, methods: str) -> dict:
    return finish(*v.start("alone", 0, methods))


def together(v: Version, methods: str) -> list[dict]:
    started = [v.start("pair", fold, methods) for fold in (0, 1)]
    return [finish(*s) for s in started]


def beside_numpy(v: Version, methods: str) -> dict:
    env = {k: val for k, val in os.environ.items() if k not in STRIP_ENV}
    env.update(OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2")
    loop = subprocess.Popen([sys.executable, "-c", NUMPY_LOOP], env=env, cwd=v.work)
    try:
        time.sleep(2.0)  # the loop is at full speed before the run starts
        if loop.poll() is not None:
            raise SystemExit("the numpy loop exited early")
        return finish(*v.start("numpy", 0, methods))
    finally:
        loop.terminate()
        loop.wait(timeout=30)


def warm(v: Version) -> float:
    t = time.perf_counter()
    finish(*v.start("warmup", 0, "mean"))
    return time.perf_counter() - t


# -- main ---------------------------------------------------------------------------------------
def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assigns = text.partition(":")
    env = dict(a.split("=", 1) for a in assigns.split(",") if a)
    if not name or not env:
        raise SystemExit(f"--variant {text!r}: expected NAME:VAR=VALUE[,VAR=VALUE]")
    return name, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="HEAD", help="git ref of today's code (default HEAD)")
    ap.add_argument("--versions", default="ref,tree", help="which of ref,tree to run (default both)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE[,VAR=VALUE]",
                    help="also run the working tree with these environment variables")
    ap.add_argument("--methods", default="triplex,stflow")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each situation; medians are compared")
    ap.add_argument("--situations", default="a,b,c", help="which of a (alone), b (two at once), c (beside numpy)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (results and logs of every run)")
    args = ap.parse_args()

    load1 = os.getloadavg()[0]
    print(f"load average (1 min) before the benchmark: {load1:.2f} on {os.cpu_count()} CPUs"
          + ("  WARNING: not a quiet machine, the ratios will not mean much" if load1 > 0.5 else ""))
    work = Path(tempfile.mkdtemp(prefix="bench-fair-cores-"))
    try:
        wanted = [v.strip() for v in args.versions.split(",") if v.strip()]
        versions: list[Version] = []
        if "ref" in wanted:
            versions.append(Version(f"ref({args.ref})", from_ref(args.ref, work / "ref"), {}, work))
        if "tree" in wanted or args.variant:
            tree_site = from_tree(work / "tree")
            if "tree" in wanted:
                versions.append(Version("tree", tree_site, {}, work))
            for text in args.variant:
                name, env = parse_variant(text)
                versions.append(Version(f"tree+{name}", tree_site, env, work))
        for v in versions:
            print(f"warm-up ({v.name}: `mean` on fold 0, fills the embedding cache): {warm(v):.1f} s")

        results: dict[str, dict[str, list]] = {v.name: {"a": [], "b": [], "c": []} for v in versions}
        for i in range(args.repeat):
            print(f"\nround {i + 1} of {args.repeat}")
            for key, label, fn in (("a", "(a) alone", alone), ("b", "(b) two at once", together),
                                   ("c", "(c) beside a 2-thread numpy loop", beside_numpy)):
                if key not in args.situations:
                    continue
                for v in versions:  # interleaved: a drift of the machine hits every version alike
                    out = fn(v, args.methods)
                    runs = out if isinstance(out, list) else [out]
                    results[v.name][key].append([r["wall"] for r in runs])
                    for j, r in enumerate(runs):
                        print(describe(f"{v.name} {label}" + (f" #{j + 1}" if len(runs) > 1 else ""), r))

        print("\nsummary (median walls; ratios against the same version alone)")
        med = {}
        for v in versions:
            r = results[v.name]
            a = statistics.median(w[0] for w in r["a"]) if r["a"] else float("nan")
            b = statistics.median(max(w) for w in r["b"]) if r["b"] else float("nan")
            c = statistics.median(w[0] for w in r["c"]) if r["c"] else float("nan")
            med[v.name] = a
            print(f"  {v.name:<22} alone {a:6.1f} s | two at once {b:6.1f} s each at most = {b / a:4.2f}x"
                  f" | beside numpy {c:6.1f} s = {c / a:4.2f}x")
            if r["b"] and not v.name.startswith("ref"):
                print(f"  {'':<22} two at once within 2.4x of alone: {'PASS' if b / a <= 2.4 else 'FAIL'}")
        ref = next((n for n in med if n.startswith("ref")), None)
        for name, a in med.items():
            if ref and name != ref:
                ratio = a / med[ref]
                verdict = "PASS" if ratio <= 1.10 else "FAIL"
                print(f"  {name} alone / {ref} alone = {ratio:4.2f} (at most 1.10: {verdict})")
    finally:
        if args.keep:
            print(f"\nresults and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
