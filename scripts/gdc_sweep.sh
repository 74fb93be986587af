#!/usr/bin/env bash
# The Gene Dimension Curse sweep (flag-spec §3.6, §6.4; docs/reproduction.md §6.7): joint
# node–edge graph diffusion (flag-joint) against node-only diffusion (flag-node) over the panel
# size G, on every within-patient fold of her2st-mini, each method with two score heads.
#
#   bash scripts/gdc_sweep.sh [RESULTS_DIR]                  (default: flag-bench-gdc)
#   GDC_GENES=10,50 GDC_SEEDS=0 GDC_FOLDS=0,1 GDC_WORKERS=2 bash scripts/gdc_sweep.sh DIR
#
# Protocol p2 (flag_bench/__init__.py PROTOCOL_VERSION = "p2"): one HMHVG-G panel per fold,
# fitted on all of the fold's non-test slides and shared by both methods (the validation slide
# they ask for is carved from those training slides); targets log2(1 + count) (FLAG's);
# --split slide: C2-C6 left out in turn, 5 folds inside patient C; preset small; suite gdc.
# The cells are p2 cells: the README's earlier sweep (fold C2, seed 0) was p1 and is not reused.
#
# Heads, one config file each (one config = one leaderboard row):
#   edm: score_output = "edm", the small preset's default (the network corrects the exact score
#        of a unit Gaussian; methods/flag/config.py says why);
#   raw: score_output = "raw", the released code's (and the paper preset's) head.
# The edm file only restates the default: its cells are the same cells (same cell ids) as a
# plain `flag-bench run --methods flag-joint,flag-node`, so such cells already in RESULTS_DIR
# are reused.
#
# Resumable: every step is a `flag-bench run` into RESULTS_DIR and finished cells are skipped,
# so rerun the same command after an interruption. The loop runs the cheapest cells first (small
# G first, every fold and seed of it, both heads) so an interrupted sweep leaves complete
# small-G columns. A step with failed cells does not stop the sweep; the script exits non-zero
# at the end. Cost on the 2-core CPU: one flag-joint cell (small, G = 200, fold C2, seed 0)
# took 509 s to fit and 29 s to sample (measured 2026-12-06, torch 2.14.1, not quiet), so the
# full grid (2 methods x 2 heads x 4 G x 5 folds x 3 seeds = 240 cells) is a day or more of
# CPU: run it on a GPU (--device cuda), or narrow it with GDC_GENES / GDC_SEEDS / GDC_FOLDS.
#
# Environment: GDC_GENES (default 10,50,200,800), GDC_SEEDS (default 0,1,2), GDC_FOLDS (fold
# indices 0-4 = C2-C6; default all, and --folds is then not passed), GDC_WORKERS (default 1).
# At the end: the wall time, then scripts/gdc_tables.py RESULTS_DIR --write RESULTS_DIR/gdc-tables.md.
set -uo pipefail

RD="${1:-flag-bench-gdc}"
GENES="${GDC_GENES:-10,50,200,800}"
SEEDS="${GDC_SEEDS:-0,1,2}"
FOLDS="${GDC_FOLDS:-}"
WORKERS="${GDC_WORKERS:-1}"
METHODS="flag-joint,flag-node"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="$(mktemp -d)"
trap 'rm -rf "$CONF"' EXIT

head_config() {  # head_config HEAD: the score head of both methods as a config file
    printf '[methods.flag-joint]\nscore_output = "%s"\n[methods.flag-node]\nscore_output = "%s"\n' "$1" "$1" \
        > "$CONF/head-$1.toml"
    echo "$CONF/head-$1.toml"
}

FOLD_ARGS=()
TABLE_ARGS=()
if [ -n "$FOLDS" ]; then
    FOLD_ARGS=(--folds "$FOLDS")
    IFS=, read -r -a fold_list <<< "$FOLDS"
    TABLE_ARGS=(--n-folds "${#fold_list[@]}")
fi

start=$SECONDS
failed=0
IFS=, read -r -a gene_list <<< "$GENES"
for g in $(printf '%s\n' "${gene_list[@]}" | sort -nu); do  # cheapest first
    for head in edm raw; do
        echo "== G = $g, head $head ($(date '+%H:%M:%S'), $(( (SECONDS - start) / 60 )) min so far)"
        flag-bench run --datasets her2st-mini --panel hmhvg --preset small --split slide \
            --target-transform log2p1 --suite gdc --results-dir "$RD" --no-progress \
            --methods "$METHODS" --genes "$g" --seeds "$SEEDS" --workers "$WORKERS" \
            --config "$(head_config "$head")" "${FOLD_ARGS[@]}" || failed=1
    done
done
wall=$(( SECONDS - start ))
printf 'gdc sweep wall time: %dh %02dm %02ds (%d s)\n' $((wall / 3600)) $((wall % 3600 / 60)) $((wall % 60)) "$wall"

[ "$failed" = 0 ] || echo "some steps had failed cells: rerun the same command to retry them" >&2
python "$HERE/gdc_tables.py" "$RD" --genes "$GENES" --seeds "$SEEDS" "${TABLE_ARGS[@]}" \
    --write "$RD/gdc-tables.md" || failed=1
exit "$failed"
