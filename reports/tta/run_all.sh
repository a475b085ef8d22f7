#!/usr/bin/env bash
# The runs behind reports/tta.md: shipped resnet18 / sdnet18, generated CIFAR-10-C (seed 0), the first N images of
# every cell (clean, the 15 benchmark corruptions and speckle_noise at severities 1-5), then the stream setting
# (all 10,000 images of gaussian_noise severity 5 in order). Reports go to reports/tta/; then
#   python reports/tta/render.py reports/tta reports/tta.md
# Usage: N=500 bash reports/tta/run_all.sh   (N=2000 or 10000 for the fuller runs; the report says which N it used)
set -euo pipefail
OUT=${OUT:-reports/tta}
N=${N:-500}
source "$(dirname "$0")/common.sh"
run() {
    local name=$1; shift
    have "$name" "$N" && return 0
    started "$name"
    sdnet eval -c all -c speckle_noise -s all -n "$N" --seed 0 --out "$OUT" --name "$name" "$@"
    finished "$name"
}
stream() {
    local name=$1; shift
    have "$name" 10000 && return 0
    sdnet eval -c gaussian_noise -s 5 -n 10000 --seed 0 --out "$OUT" --name "$name" "$@"
}
run resnet18-none --model resnet18
run sdnet18-lam0.1 --model sdnet18
run resnet18-bn --model resnet18 --adapt bn
run sdnet18-bn --model sdnet18 --adapt bn
run sdnet18-auto --model sdnet18 --lam auto
run sdnet18-auto-bn --model sdnet18 --lam auto --adapt bn
run resnet18-tent --model resnet18 --adapt tent
run sdnet18-tent --model sdnet18 --adapt tent
run sdnet18-auto-tent --model sdnet18 --lam auto --adapt tent
stream stream-resnet18-none --model resnet18
stream stream-resnet18-bn --model resnet18 --adapt bn
stream stream-resnet18-tent --model resnet18 --adapt tent
stream stream-sdnet18-auto --model sdnet18 --lam auto
stream stream-sdnet18-tent --model sdnet18 --adapt tent
