"""`flag-bench predict`: a saved model's predicted expression on slides without counts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, csv_list, dataset_list, default_of, fail
from flag_bench.errors import UserError


RESULTS_DIR = Path(default_of("results_dir"))  # `flag-bench run`'s default, declared once in RunConfig
DEVICE = default_of("device")


@app.command()
def predict(
    model: str = typer.Option(..., "--model", help="Cell id (or a unique prefix of one) whose model `flag-bench run "
                              "--save-models` kept."),
    datasets: str = typer.Option(..., "--datasets", "-d", help="One dataset spec: the slides to predict on, e.g. "
                                 "spaceranger:path=OUTS,image=IMAGE.tif. It needs the image (or patches) and spot "
                                 "positions; counts are neither read nor needed."),
    output: Path = typer.Option(..., "--output", "-o", help="The .h5ad file to write (predictions, obsm['spatial'])."),
    results_dir: Path = typer.Option(RESULTS_DIR, "--results-dir", help="Results folder holding the saved model."),
    # "4": flag_bench.predict.DEFAULT_PLOT_GENES, not imported here so that --help stays light
    genes_to_plot: Optional[str] = typer.Option(None, "--genes-to-plot", help="Comma-separated genes to map in the "
                                                "PNG (default: the 4 of the model's genes whose predictions vary "
                                                "most across the spots)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="The PNG of predicted maps (default: the output's name "
                                        "with .png)."),
    device: str = typer.Option(DEVICE, "--device", help="auto, cpu, cuda or cuda:N."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Embedding cache folder (default "
                                             "$FLAG_BENCH_CACHE or ~/.cache/flag-bench)."),
) -> None:
    """Predict expression on new slides with a saved model: its genes, patch, encoder and target
    transform, on every slide of the dataset (every in-tissue spot of a Space Ranger run). Writes
    the .h5ad (X: predictions in the model's target space, e.g. log1p counts; obs slide and
    barcode; obsm['spatial'] in full-resolution pixels; uns['spatial'] with the H&E for
    sc.pl.spatial) and a PNG of predicted maps, one panel per gene per slide."""
    try:
        from flag_bench import resolve
        from flag_bench.models import find_model, load_model
        from flag_bench.predict import run_predict

        specs = dataset_list(datasets) or ()
        if len(specs) != 1:
            raise UserError(f"--datasets {datasets}: give one dataset spec (predict writes one file per dataset)")
        named = csv_list(genes_to_plot, str, "--genes-to-plot")
        dev = resolve.device(device)
        model_dir = find_model(results_dir, model)
        method, info = load_model(model_dir, device=dev)
        written = run_predict(method, info, dataset_spec=specs[0], output=output, plot=plot, genes_to_plot=named,
                              device=dev, cache_dir=str(cache_dir) if cache_dir is not None else None,
                              seed=int(getattr(info, "seed", 0) or 0))
    except UserError as exc:
        fail(str(exc))
        return
    out = console()
    how = (f"the {len(written.genes_plotted)} whose predictions vary most; choose with --genes-to-plot"
           if written.chosen else "as named")
    for line in (f"wrote {written.h5ad} ({written.n_spots} spots on {written.n_slides} slide(s) x {len(info.genes)} "
                 f"genes of model {info.cell_id})",
                 f"wrote {written.png} (maps of {', '.join(written.genes_plotted)}: {how})"):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
