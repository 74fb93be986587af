"""`flag-bench data check SPEC` (what a dataset spec resolves to, nothing run or written) and
`flag-bench embed SPEC --encoder NAME` (fill the embedding cache ahead of a grid)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, default_of, fail
from flag_bench.errors import UserError

data_app = typer.Typer(name="data", help="Inspect datasets before running anything.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")


def _load(spec_text: str):
    import warnings

    from flag_bench import resolve
    from flag_bench.spec import DatasetSpec

    spec = DatasetSpec.parse(spec_text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = resolve.dataset(spec)
    return spec, ds, [str(w.message) for w in caught]


def describe(ds) -> list[str]:
    """Plain lines: the dataset, then one line per slide (pure, for tests)."""
    import numpy as np

    meta = ds.meta
    patients = sorted(set(ds.patients.values()))
    lines = [
        f"dataset {ds.name}  version {ds.version}  platform {ds.platform}  organism {ds.organism}",
        f"  slides {len(ds.slides)}  patients {len(patients)} ({meta.get('patient_source', 'from the loader')})  "
        f"spots {sum(s.n_spots for s in ds.slides)}  genes {len(ds.genes)} (shared by every slide)",
        f"  default split {ds.default_split}  capabilities {', '.join(sorted(ds.capabilities))}",
        f"  corpora {', '.join(meta.get('corpora', ())) or 'none declared'}",
    ]
    if meta.get("test_informed_files"):
        lines.append(f"  test-informed gene lists: {', '.join(meta['test_informed_files'])}")
    lines.append("  slide  patient  spots  pixel size (source)  images")
    for s in ds.slides:
        m = s.meta
        src = m.get("pixel_size_source", "given by the dataset")
        kind = m.get("image_source", "patches" if s.tile_reader is not None else "none")
        if kind == "patches":
            img = f"patches {m.get('patches_file', '')} ({m.get('patch_field_um', float('nan')):.4g} um stored)"
        elif kind == "image":
            img = f"image {m.get('image_file', '')}"
        else:
            img = "stored patches" if s.tile_reader is not None else "none"
        lines.append(f"  {s.id}  {s.patient}  {s.n_spots}  {s.pixel_size_um:.4g} um/px ({src})  {img}")
        coords = np.asarray(s.coords_um)
        if len(coords):
            span = coords.max(axis=0) - coords.min(axis=0)
            lines.append(f"      tissue extent {span[0]:.0f} x {span[1]:.0f} um, spot diameter {s.spot_diameter_um:g} um")
    problems = []
    for sid, n in meta.get("dropped_spots", {}).items():
        problems.append(f"{sid}: {n} spot(s) without a patch were dropped")
    for sid, n in meta.get("genes_dropped_not_shared", {}).items():
        problems.append(f"{sid}: {n} gene(s) not measured on every slide were dropped")
    no_image = [s.id for s in ds.slides if s.tile_reader is None]
    if no_image:
        problems.append(f"no image or patches for {', '.join(no_image[:5])}{' ...' if len(no_image) > 5 else ''}: "
                        "methods that need tiles or embeddings cannot run (give image= or patches= in the spec)")
    if meta.get("patients_known") is False:
        problems.append("patients unknown: each slide is its own patient (give patients to use --split patient)")
    lines.append("problems: " + ("none" if not problems else ""))
    lines += [f"  - {p}" for p in problems]
    return lines


@data_app.command("check")
def check(spec: str = typer.Argument(..., help="Dataset spec, e.g. hest:root=/data/hest,ids=TENX95+TENX99.")):
    """Print what a dataset spec resolves to (slides, patients, spots, genes, pixel size and its
    source, patches or image, problems found) without running or writing anything.

    Specs: hest:root=DIR[,ids=A+B,organ=..,species=..,technology=..]; hest-bench:root=DIR,task=IDC;
    spaceranger:path=OUTS[,image=FILE] or spaceranger:manifest=FILE; st:root=DIR[,manifest=FILE];
    h5ad:path=FILE_OR_DIR[,patches=..|image=..]. Every loader takes pixel_size=UM_PER_PX; a list
    inside one key is joined by '+' (',' separates keys)."""
    try:
        _, ds, warned = _load(spec)
    except UserError as exc:
        fail(str(exc))
        return
    out = console()
    for line in describe(ds):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    for w in warned:
        out.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def embed(
    spec: str = typer.Argument(..., help="Dataset spec, e.g. hest:root=/data/hest."),
    encoder: str = typer.Option(default_of("encoder"), "--encoder", help="Image encoder (a registered name)."),
    patch_um: float = typer.Option(float(default_of("patch_um")), "--patch-um", help="Patch side in micrometres of tissue."),
    patch_px: int = typer.Option(int(default_of("patch_px")), "--patch-px", help="Patch side in pixels after resampling."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Embedding cache folder (default $FLAG_BENCH_CACHE or ~/.cache/flag-bench)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
):
    """Fill the embedding cache for every slide of a dataset, reading patches a chunk at a time,
    so a later `flag-bench run` with the same encoder and patch only reads the cache."""
    import time

    try:
        from flag_bench import resolve
        from flag_bench.datasets.base import PatchSpec
        from flag_bench.datasets.embed_cache import SlideRef, get_embeddings, is_cached

        enc = resolve.encoder(encoder)  # an unknown name fails before the dataset loads; weights load on use
        if patch_um <= 0 or patch_px < 1:
            raise UserError(f"--patch-um {patch_um:g} --patch-px {patch_px}: both must be positive")
        patch = PatchSpec(float(patch_um), int(patch_px))
        _, ds, warned = _load(spec)
        from flag_bench.datasets.readers.images import field_limit

        # the run's check (plan.py): one source pixel over the stored field is tolerated (HEST's cut)
        limit, tol = field_limit([s.tile_reader for s in ds.slides])
        if limit is not None and patch.size_um > limit + tol + 1e-6:
            raise UserError(f"--patch-um {patch_um:g}: dataset {spec} stores patches of at most {limit:g} um "
                            f"(+{tol:.3g} um tolerated); use --patch-um {limit + tol:g} or less")
        missing = [s.id for s in ds.slides if s.tile_reader is None]
        if missing:
            raise UserError(f"dataset {spec}: slide(s) {', '.join(missing)} have no image or patches; "
                            "give them in the spec before embedding")
        cache = str(cache_dir) if cache_dir is not None else None
        todo = [s for s in ds.slides if not is_cached(SlideRef.of(ds, s.id), enc, patch, device=device, cache_dir=cache)]
    except UserError as exc:
        fail(str(exc))
        return
    out = console()
    for w in warned:
        out.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    total = sum(s.n_spots for s in todo)
    t0 = time.perf_counter()
    if not no_progress and total:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=out) as prog:
            task = prog.add_task(f"embedding ({encoder})", total=total)
            for s in todo:
                prog.update(task, description=f"embedding {s.id} ({encoder})")
                get_embeddings(ds, s.id, enc, patch, device=device, cache_dir=cache,
                               on_batch=lambda n: prog.advance(task, n))
    else:
        for s in todo:
            get_embeddings(ds, s.id, enc, patch, device=device, cache_dir=cache)
    spent = time.perf_counter() - t0
    rate = f", {total / spent:.1f} spots/s" if total and spent > 0 else ""
    out.print(f"embedded {len(todo)} slide(s), {total} spots with {encoder} at {patch.key()} in {spent:.1f} s{rate}; "
              f"{len(ds.slides) - len(todo)} already cached", markup=False, highlight=False, soft_wrap=True)
