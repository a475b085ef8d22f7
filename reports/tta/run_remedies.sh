#!/usr/bin/env bash
# The runs behind the per-image, mixed-stream, batch-1 and MEMO sections of reports/tta.md (issue 30): shipped
# resnet18 / sdnet18, generated CIFAR-10-C (seed 0), clean and the four noises (gaussian, shot, impulse,
# speckle) at severities 1-5. Each run is skipped when its report exists, so rerunning the script resumes.
#   N: images per cell of the one-corruption per-image runs (the same first images as run_all.sh's N)
#   S: images per cell of the mixed-stream and batch-1 comparison (per-image methods rerun on the same S)
#   M: images per severity-5 noise cell for MEMO and its baselines
# Then: python reports/tta/render.py reports/tta reports/tta.md
# Usage: N=500 S=100 M=5 bash reports/tta/run_remedies.sh
set -euo pipefail
OUT=${OUT:-reports/tta}
N=${N:-500}
S=${S:-100}
M=${M:-5}
NOISES=(-c gaussian_noise -c shot_noise -c impulse_noise -c speckle_noise)
run() {  # name, images per cell, severities, sdnet eval options
    local name=$1 n=$2 sev=$3; shift 3
    [ -f "$OUT/$name.json" ] && return 0
    echo "$(date -u +%FT%TZ) start $name (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    sdnet eval "${NOISES[@]}" -s "$sev" -n "$n" --seed 0 --out "$OUT" --name "$name" "$@"
}
# one-corruption batches: a per-image remedy beside the batch methods of run_all.sh (same first N images)
run noise-sdnet18-auto-bnprior "$N" all --model sdnet18 --lam auto --adapt bn-prior
# the mixed stream (every cell's first S images interleaved) in batches of 200, and batch 1; the per-image
# methods decide per image, so their numbers on the same S images hold for any stream and batch size
run s-sdnet18-auto "$S" all --model sdnet18 --lam auto
run s-sdnet18-auto-bnprior "$S" all --model sdnet18 --lam auto --adapt bn-prior
run mixed-resnet18-tent "$S" all --model resnet18 --adapt tent --stream mixed
run batch1-resnet18-bn "$S" all --model resnet18 --adapt bn --stream mixed --batch-size 1
run mixed-sdnet18-bn "$S" all --model sdnet18 --adapt bn --stream mixed
run batch1-resnet18-tent "$S" all --model resnet18 --adapt tent --stream mixed --batch-size 1
# MEMO: 33 forwards and a backward per image, so severity 5 of the noises on M images, beside its baselines
run memo-sdnet18-auto "$M" 5 --model sdnet18 --lam auto
run memo-sdnet18-auto-memo "$M" 5 --model sdnet18 --lam auto --adapt memo --batch-size 1
run memo-resnet18-none "$M" 5 --model resnet18
run memo-resnet18-memo "$M" 5 --model resnet18 --adapt memo --batch-size 1
run s-sdnet18-bnprior "$S" all --model sdnet18 --adapt bn-prior
# the rest, as time allows
run mixed-resnet18-bn "$S" all --model resnet18 --adapt bn --stream mixed
run mixed-sdnet18-tent "$S" all --model sdnet18 --adapt tent --stream mixed
run batch1-sdnet18-bn "$S" all --model sdnet18 --adapt bn --stream mixed --batch-size 1
run batch1-sdnet18-tent "$S" all --model sdnet18 --adapt tent --stream mixed --batch-size 1
run s-resnet18 "$S" all --model resnet18
run noise-sdnet18-bnprior "$N" all --model sdnet18 --adapt bn-prior
run noise-resnet18-bnprior "$N" all --model resnet18 --adapt bn-prior
