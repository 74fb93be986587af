#!/usr/bin/env bash
# The FLAG paper's HER2ST protocol on her2st-mini, then the diagnostics of SSC and GSC that
# docs/reproduction.md cites. Every step is an ordinary `flag-bench run` into one results
# folder, so an interrupted reproduction resumes where it stopped (finished cells are skipped).
#
#   bash scripts/reproduce_her2st.sh [RESULTS_DIR]          (default: flag-bench-reproduction)
#   REPRO_PART=table bash scripts/reproduce_her2st.sh       only the table (part 1)
#
# Part 1, the table: HMHVG-200 fitted on each fold's training slides; targets log2(1 + counts) as
# the paper's (so MSE is in the paper's units); leave-one-slide-out over C2-C6 (split slide) and
# C -> B4 (split patient); the six seed methods, the FLAG ablations, the four controls, the four
# null controls and the oracles; preset small; seeds 0, 1, 2. Generative methods (flag, stem,
# stflow) are scored on each draw as well as on the mean of their draws (sample.<score>).
# Part 2, the diagnostics (seed 0): STFlow with 4 draws instead of 1; color-stats instead of
# EfficientNet-Lite0 (ridge, knn, stem); G = 10, 50 and (without FLAG) 800 beside 200. The Gene
# Dimension Curse sweep of flag-joint and flag-node is scripts/gdc_sweep.sh, run apart (a
# flag-joint cell takes minutes on 2 cores). Moran weights (k = 4, 6, 8, radius) and within- vs
# cross-patient folds need no new cells: scripts/diagnose_structure.py rescores the saved
# predictions. REPRO_WORKERS=N runs N cells at a time (each on its share of the cores).
set -euo pipefail

RD="${1:-flag-bench-reproduction}"
PART="${REPRO_PART:-all}"
SEEDS="${REPRO_SEEDS:-0,1,2}"
WORKERS="${REPRO_WORKERS:-1}"
METHODS="flag,flag-no-gfm,flag-no-graph,flag-regression,stem,stflow,triplex,histogene,bleep"
METHODS="$METHODS,mean,ridge,knn,ridge-smooth,random-spot,gene-prior,null-shuffle,null-rotate,oracle-smooth"
NOISE_LEVELS="0.25 0.5 1 2"
CONF="$(mktemp -d)"
trap 'rm -rf "$CONF"' EXIT

run() {  # run SPLIT ARGS...: one grid of the reproduction suite
    local split="$1"
    shift
    flag-bench run --datasets her2st-mini --panel hmhvg --preset small --split "$split" \
        --target-transform log2p1 --results-dir "$RD" --suite her2st-paper --workers "$WORKERS" \
        --no-progress "$@"
}

noise_config() {  # the oracle-noise level as a config file (one config = one leaderboard row)
    printf '[methods.oracle-noise]\nsigma = %s\n' "$1" > "$CONF/noise-$1.toml"
    echo "$CONF/noise-$1.toml"
}

# -- part 1: the table ------------------------------------------------------------------------
for split in slide patient; do
    run "$split" --genes 200 --seeds "$SEEDS" --methods "$METHODS"
    for s in $NOISE_LEVELS; do
        run "$split" --genes 200 --seeds "$SEEDS" --methods oracle-noise --config "$(noise_config "$s")"
    done
done
[ "$PART" = table ] && exec python scripts/diagnose_structure.py "$RD" --table-only

# -- part 2: diagnostics (seed 0), cheapest and most telling first ------------------------------
# (one draw against the mean of draws needs no run: part 1 scores every draw of flag and stem.)
# STFlow's official inference is one draw; four show how much its draws vary
printf '[methods.stflow]\nn_samples = 4\n' > "$CONF/stflow-draws.toml"
for split in slide patient; do
    run "$split" --genes 200 --seeds 0 --methods stflow --config "$CONF/stflow-draws.toml"
done
for split in slide patient; do  # the image encoder
    run "$split" --genes 200 --seeds 0 --methods ridge,knn,stem --encoder color-stats
done
for split in slide patient; do  # SSC and GSC against G (200 is part 1's); FLAG at G = 800 (over
    # 3 minutes a cell on 2 busy CPU cores) is left to GPU runs
    run "$split" --genes 10,50 --seeds 0 --methods mean,ridge,knn,stem,flag,oracle-smooth
    run "$split" --genes 800 --seeds 0 --methods mean,ridge,knn,stem,oracle-smooth
    run "$split" --genes 10,50,800 --seeds 0 --methods oracle-noise --config "$(noise_config 0.5)"
done
python scripts/diagnose_structure.py "$RD"
