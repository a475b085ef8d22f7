#!/usr/bin/env bash
# The runs behind the per-image, mixed-stream and batch-1 sections of reports/tta.md (issue 30): shipped
# resnet18 / sdnet18, generated CIFAR-10-C (seed 0), the four noises (gaussian, shot, impulse, speckle) at
# severities 1-5 plus clean, the first N images of every cell (the same images as run_all.sh's N). Each run
# is skipped when its report exists, so rerunning the script resumes. Then
#   python reports/tta/render.py reports/tta reports/tta.md
# Usage: N=500 M=10 bash reports/tta/run_remedies.sh   (M: images per severity-5 noise cell for MEMO)
set -euo pipefail
OUT=${OUT:-reports/tta}
N=${N:-500}
M=${M:-10}
NOISES=(-c gaussian_noise -c shot_noise -c impulse_noise -c speckle_noise)
run() {
    local name=$1; shift
    [ -f "$OUT/$name.json" ] && return 0
    echo "$(date -u +%FT%TZ) start $name" >&2
    sdnet eval "${NOISES[@]}" -s all -n "$N" --seed 0 --out "$OUT" --name "$name" "$@"
}
memo() {
    local name=$1; shift
    [ -f "$OUT/$name.json" ] && return 0
    echo "$(date -u +%FT%TZ) start $name" >&2
    sdnet eval "${NOISES[@]}" -s 5 -n "$M" --seed 0 --out "$OUT" --name "$name" "$@"
}
# one-corruption batches: the per-image remedies (they decide per image, so any stream gives the same)
run noise-sdnet18-auto-bnprior --model sdnet18 --lam auto --adapt bn-prior
run noise-sdnet18-bnprior --model sdnet18 --adapt bn-prior
# the mixed stream: every cell's images interleaved, batches of 200
run mixed-resnet18-tent --model resnet18 --adapt tent --stream mixed
run mixed-sdnet18-bn --model sdnet18 --adapt bn --stream mixed
# MEMO: 33 forwards and a backward per image, so severity 5 of the noises on M images, beside its baselines
memo memo-resnet18-none --model resnet18
memo memo-sdnet18-auto --model sdnet18 --lam auto
memo memo-sdnet18-auto-memo --model sdnet18 --lam auto --adapt memo --batch-size 1
memo memo-resnet18-memo --model resnet18 --adapt memo --batch-size 1
# batch 1 in the mixed stream
run batch1-resnet18-bn --model resnet18 --adapt bn --stream mixed --batch-size 1
run batch1-resnet18-tent --model resnet18 --adapt tent --stream mixed --batch-size 1
# the rest, as time allows
run mixed-resnet18-bn --model resnet18 --adapt bn --stream mixed
run mixed-sdnet18-tent --model sdnet18 --adapt tent --stream mixed
run batch1-sdnet18-bn --model sdnet18 --adapt bn --stream mixed --batch-size 1
run batch1-sdnet18-tent --model sdnet18 --adapt tent --stream mixed --batch-size 1
run noise-resnet18-bnprior --model resnet18 --adapt bn-prior
