"""`flag-bench cache info` (where the embedding cache is, how big, per encoder) and
`flag-bench cache prune` (delete entries by age and/or encoder, or all of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flag_bench.cli import app
from flag_bench.cli.common import console, fail
from flag_bench.errors import UserError

cache_app = typer.Typer(name="cache", help="Inspect and prune the embedding cache.", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(cache_app, name="cache")

_DIR_HELP = "Embedding cache folder (default $FLAG_BENCH_CACHE or ~/.cache/flag-bench)."


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"  # pragma: no cover


def _when(t: float | None) -> str:
    import time

    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _known_encoders() -> tuple[str, ...]:
    try:
        from flag_bench import resolve

        return resolve.encoder_names()
    except Exception:  # a broken plugin must not stop the cache listing
        return ()


def info_lines(info: dict) -> list[str]:
    """Plain lines of ``embed_cache.cache_info`` (pure, for tests)."""
    if not info["entries"]:
        where = "" if info["exists"] else " (the folder does not exist yet)"
        return [f"embedding cache {info['path']}{where}: empty"]
    lines = [f"embedding cache {info['path']}",
             f"  {info['entries']} entries, {human_bytes(info['bytes'])}; oldest {_when(info['oldest'])}, "
             f"newest {_when(info['newest'])}"]
    width = max(len(e) for e in info["encoders"])
    for name, d in info["encoders"].items():  # two lines each: the report fits 80 columns
        legacy = f"; {d['legacy']} in the older key format" if d["legacy"] else ""
        lines.append(f"  {name:<{width}}  {d['entries']:>5} entries  {human_bytes(d['bytes']):>10}")
        lines.append(f"    oldest {_when(d['oldest'])}, newest {_when(d['newest'])}{legacy}")
    if info["legacy"]:
        lines += [f"  {info['legacy']} entries use the older key (dataset version) and are never read",
                  "  again: `flag-bench cache prune --stale` deletes them"]
    return lines


@cache_app.command("info")
def info(
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_DIR_HELP),
):
    """Where the embedding cache is, its size and entries, per encoder with the oldest and newest."""
    from flag_bench.datasets import embed_cache

    out = console()
    for line in info_lines(embed_cache.cache_info(cache_dir, _known_encoders())):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@cache_app.command("prune")
def prune(
    older_than: Optional[str] = typer.Option(None, "--older-than", metavar="DAYS",
                                               help="Delete entries last written more than DAYS days ago."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Delete only this encoder's entries."),
    stale: bool = typer.Option(False, "--stale", help="Delete only entries in the older key format (never read again)."),
    all_: bool = typer.Option(False, "--all", help="Delete every entry (no other filter allowed)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted, delete nothing."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=_DIR_HELP),
):
    """Delete embedding cache entries by age, encoder and/or older key format (every filter given
    must hold), or --all; prints what it freed. A deleted entry is re-encoded when a run needs it."""
    from flag_bench.datasets import embed_cache

    try:
        if all_ and (older_than is not None or encoder is not None or stale):
            raise UserError("--all deletes every entry: give it alone, or --older-than / --encoder / --stale without it")
        if not all_ and older_than is None and encoder is None and not stale:
            raise UserError("cache prune: say what to delete: --older-than DAYS, --encoder NAME, --stale or --all")
        days = None
        if older_than is not None:
            try:
                days = float(older_than)
            except ValueError:
                days = float("nan")
            if not (0 <= days < float("inf")):
                raise UserError(f"--older-than {older_than}: give a number of days >= 0, e.g. --older-than 30")
        if encoder is not None and not encoder.strip():
            raise UserError("--encoder: give an encoder name (see `flag-bench cache info`)")
    except UserError as exc:
        fail(str(exc))
        return
    entries = embed_cache.cache_entries(cache_dir, _known_encoders())
    chosen = embed_cache.select_entries(entries, older_than_days=days, encoder=encoder, stale=stale)
    out = console()
    folder = embed_cache.cache_info(cache_dir)["path"]
    verb = "would free" if dry_run else "freed"
    n = freed = 0
    for e in chosen:
        k, b = embed_cache.prune([e], dry_run=dry_run)
        if k:
            n, freed = n + k, freed + b
            out.print(f"{'would delete' if dry_run else 'deleted'} {e.path.name} ({human_bytes(e.bytes)})",
                      markup=False, highlight=False, soft_wrap=True)
    out.print(f"{verb} {human_bytes(freed)} in {n} of {len(entries)} entries of {folder}; "
              f"{len(entries) - n} kept", markup=False, highlight=False, soft_wrap=True)
