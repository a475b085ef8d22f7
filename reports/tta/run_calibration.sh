#!/usr/bin/env bash
# The lambda rule of the shipped sdnet18 calibrated under BN adaptation (issue 30), and eval with it; resumable.
# The calibration groups: clean and the four noises at severities 1-5, FIT_N corrupted TRAINING images each, the
# shipped calibration's lambda grid, every (lambda, image) pair under BN statistics of batches of 200 of one group.
# Usage: N=500 FIT_N=200 bash reports/tta/run_calibration.sh
set -euo pipefail
OUT=${OUT:-reports/tta}
N=${N:-500}
FIT_N=${FIT_N:-200}
CAL="$OUT/sdnet18-w32-cifar10.lambda-bn.json"
NOISES=(-c gaussian_noise -c shot_noise -c impulse_noise -c speckle_noise)
if [ ! -f "$OUT/sweep-sdnet18-bn.json" ]; then
    echo "$(date -u +%FT%TZ) start sweep-sdnet18-bn" >&2
    sdnet sweep-lambda --model sdnet18 -c gaussian_noise -s all -n 100 --seed 0 \
        --lams 0.1,0.2,0.3,0.4,0.6,0.8,1.0,1.2,1.4 --fit --fit-n "$FIT_N" \
        --fit-corruption gaussian_noise --fit-corruption shot_noise --fit-corruption impulse_noise \
        --fit-corruption speckle_noise --adapt bn --calibration-out "$CAL" --out "$OUT" --name sweep-sdnet18-bn
fi
if [ ! -f "$OUT/noise-sdnet18-autobn-bn.json" ]; then
    echo "$(date -u +%FT%TZ) start noise-sdnet18-autobn-bn" >&2
    sdnet eval "${NOISES[@]}" -s all -n "$N" --seed 0 --model sdnet18 --lam auto --adapt bn --calibration "$CAL" \
        --out "$OUT" --name noise-sdnet18-autobn-bn
fi
