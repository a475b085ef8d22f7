#!/usr/bin/env bash
# The lambda rule of the shipped sdnet18 calibrated under BN adaptation (issue 30), and eval with it; resumable.
# Calibration groups: clean and the four noises at severities SEV, FIT_N corrupted TRAINING images each, lambdas
# LAMS, every (lambda, image) pair under BN statistics of batches of 200 of one group. Eval: the four noises at
# SEV, the first N test images per cell, with that rule and with the shipped one (calibrated with the stored
# statistics); sdnet18 + bn at lambda 0.1 on the same images comes from run_full.sh's noise-sdnet18-bn.
# Usage: N=2000 FIT_N=200 bash reports/tta/run_calibration.sh
set -euo pipefail
OUT=${OUT:-reports/tta}
N=${N:-2000}
FIT_N=${FIT_N:-200}
LAMS=${LAMS:-0.1,0.2,0.4,0.6,1.0}
SEV=(-s 3 -s 5)
CAL="$OUT/sdnet18-w32-cifar10.lambda-bn.json"
NOISES=(-c gaussian_noise -c shot_noise -c impulse_noise -c speckle_noise)
source "$(dirname "$0")/common.sh"
if [ ! -f "$OUT/sweep-sdnet18-bn.json" ]; then
    started sweep-sdnet18-bn
    sdnet sweep-lambda --model sdnet18 -c gaussian_noise "${SEV[@]}" -n 100 --seed 0 --lams "$LAMS" --fit \
        --fit-n "$FIT_N" "${NOISES[@]/-c/--fit-corruption}" --adapt bn --calibration-out "$CAL" \
        --out "$OUT" --name sweep-sdnet18-bn --resume
fi
run() {  # report name, then sdnet eval options; on the noise cells at SEV, the first N test images of each
    local name=$1; shift
    have "$name" "$N" && return 0
    started "$name"
    sdnet eval "${NOISES[@]}" "${SEV[@]}" -n "$N" --seed 0 --model sdnet18 --out "$OUT" --name "$name" "$@"
    finished "$name"
}
run noise-sdnet18-autobn-bn --lam auto --adapt bn --calibration "$CAL"
# the shipped rule (fitted with the stored statistics) under bn, on the same images
run noise-sdnet18-auto-bn --lam auto --adapt bn
