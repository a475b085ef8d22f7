#!/usr/bin/env bash
# MEMO beside its baseline for reports/tta.md, one model per call. MEMO costs 33 forwards and a backward per image
# (about 0.5 s an image on one core of this 2-core CPU), so it covers clean and the 20 noise cells at M images a
# cell (40,000 noise images at M=2000: hours of a core per model), and a run is cut into sittings: sdnet eval
# saves every finished cell, and rerunning this script continues the cut run where it stopped (--resume).
# Shipped resnet18 / sdnet18 (lambda auto), generated CIFAR-10-C (seed 0), fp32, one image per decision.
# Then: python reports/tta/render.py reports/tta reports/tta.md
# Usage: M=2000 OMP_NUM_THREADS=1 bash reports/tta/run_memo.sh resnet18   (and sdnet18 beside it on the other core)
set -euo pipefail
OUT=${OUT:-reports/tta}
M=${M:-2000}
source "$(dirname "$0")/common.sh"
case "${1:-}" in
    resnet18) baseline=memo-resnet18-none; model=(--model resnet18) ;;
    sdnet18) baseline=memo-sdnet18-auto; model=(--model sdnet18 --lam auto) ;;
    *) echo "usage: M=2000 bash $0 resnet18|sdnet18" >&2; exit 2 ;;
esac
run() {  # name, sdnet eval options
    local name=$1; shift
    have "$name" "$M" && return 0
    started "$name"
    sdnet eval -c gaussian_noise -c shot_noise -c impulse_noise -c speckle_noise -s all -n "$M" --seed 0 \
        --out "$OUT" --name "$name" --resume "${model[@]}" "$@"
    finished "$name"
}
# MEMO first: its baseline replaces the one of the same size only when MEMO is there to compare with
run "${baseline%-none}-memo" --adapt memo --batch-size 1
run "$baseline"
