#!/usr/bin/env bash
# The lambda rule of the shipped sdnet18 calibrated under BN adaptation (issue 30), and eval with it; resumable.
# Calibration groups: clean and the four noises at severities SEV, FIT_N corrupted TRAINING images each, lambdas
# LAMS, every (lambda, image) pair under BN statistics of batches of 200 of one group. Eval: the four noises at
# SEV, the first N test images per cell (the same images as run_all.sh's `auto + bn`, calibrated with stored
# statistics, for the comparison).
# Usage: N=500 FIT_N=200 bash reports/tta/run_calibration.sh
set -euo pipefail
OUT=${OUT:-reports/tta}
N=${N:-500}
FIT_N=${FIT_N:-200}
LAMS=${LAMS:-0.1,0.2,0.4,0.6,1.0}
SEV=(-s 3 -s 5)
CAL="$OUT/sdnet18-w32-cifar10.lambda-bn.json"
NOISES=(-c gaussian_noise -c shot_noise -c impulse_noise -c speckle_noise)
if [ ! -f "$OUT/sweep-sdnet18-bn.json" ]; then
    echo "$(date -u +%FT%TZ) start sweep-sdnet18-bn (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    sdnet sweep-lambda --model sdnet18 -c gaussian_noise "${SEV[@]}" -n 100 --seed 0 --lams "$LAMS" --fit \
        --fit-n "$FIT_N" "${NOISES[@]/-c/--fit-corruption}" --adapt bn --calibration-out "$CAL" \
        --out "$OUT" --name sweep-sdnet18-bn
fi
if [ ! -f "$OUT/noise-sdnet18-autobn-bn.json" ]; then
    echo "$(date -u +%FT%TZ) start noise-sdnet18-autobn-bn (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    sdnet eval "${NOISES[@]}" "${SEV[@]}" -n "$N" --seed 0 --model sdnet18 --lam auto --adapt bn \
        --calibration "$CAL" --out "$OUT" --name noise-sdnet18-autobn-bn
fi
