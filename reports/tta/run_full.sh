#!/usr/bin/env bash
# The full-size runs of reports/tta.md (issue 30), most important first, so that a run cut short still leaves the
# comparisons that matter. Shipped resnet18 / sdnet18, generated CIFAR-10-C (seed 0), fp32.
#   FT: images per noise cell of the one-corruption-batch comparison for the four configurations the target names
#      (resnet18, resnet18 + tent, sdnet18 auto and the best per-image SDNet configuration, auto + bn-prior;
#      10,000: the whole cell)
#   F: the same for every other method
#   S: images per cell (clean and the 20 noise cells) of the mixed-stream comparison; where a per-image method's
#      one-corruption run has S images, it is on the very images of the mixed stream (a per-image method decides
#      per image, so its predictions do not depend on the stream) and its s-* run is skipped
#   B1: images per cell of the batch-1 runs (one adaptation step per image, so the slowest)
# A report is skipped when it exists with the requested number of images, and rerun (replaced) when it was written
# at another size, so rerunning the script resumes and a bigger size replaces a smaller one run by run.
# Then: python reports/tta/render.py reports/tta reports/tta.md
# Usage: FT=10000 F=2000 S=2000 B1=1000 bash reports/tta/run_full.sh
set -euo pipefail
OUT=${OUT:-reports/tta}
F=${F:-2000}
FT=${FT:-10000}
S=${S:-2000}
B1=${B1:-1000}
NOISES=(-c gaussian_noise -c shot_noise -c impulse_noise -c speckle_noise)
source "$(dirname "$0")/common.sh"
run() {  # name, images per cell, severities, sdnet eval options
    local name=$1 n=$2 sev=$3; shift 3
    have "$name" "$n" && return 0
    started "$name"
    sdnet eval "${NOISES[@]}" -s "$sev" -n "$n" --seed 0 --out "$OUT" --name "$name" "$@"
    finished "$name"
}
# one-corruption batches of 200, all images of the 20 noise cells: the issue's target comparison
run noise-resnet18-tent "$FT" all --model resnet18 --adapt tent
run noise-sdnet18-auto-bnprior "$FT" all --model sdnet18 --lam auto --adapt bn-prior
run noise-sdnet18-auto "$FT" all --model sdnet18 --lam auto
run noise-resnet18-none "$FT" all --model resnet18
# the mixed stream in batches of 200 against the two batch methods that led it on 100 images a cell
run mixed-resnet18-tent "$S" all --model resnet18 --adapt tent --stream mixed
run mixed-sdnet18-bn "$S" all --model sdnet18 --adapt bn --stream mixed
# the lambda rule calibrated under bn-prior, the regime it then runs in (training images: clean and the nine
# corruptions of the shipped stored-statistics calibration at severities 1-5, FIT_N a group), and the noise cells
# with it
CAL_PRIOR="$OUT/sdnet18-w32-cifar10.lambda-bn-prior.json"
FITS=(gaussian_noise shot_noise impulse_noise speckle_noise defocus_blur fog contrast jpeg_compression brightness)
if [ ! -f "$CAL_PRIOR" ]; then
    started sweep-sdnet18-bnprior
    sdnet sweep-lambda --model sdnet18 -c gaussian_noise -s all -n 100 --seed 0 --lams 0.1,0.2,0.3,0.4,0.6,0.8,1.0,1.2,1.4 \
        --fit --fit-n "${FIT_N:-100}" "${FITS[@]/#/--fit-corruption=}" --adapt bn-prior --calibration-out "$CAL_PRIOR" \
        --out "$OUT" --name sweep-sdnet18-bnprior --resume
    finished sweep-sdnet18-bnprior
fi
run noise-sdnet18-autoprior-bnprior "$F" all --model sdnet18 --lam auto --adapt bn-prior --calibration "$CAL_PRIOR"
# the mixed stream in batches of 200, and batch 1; the per-image methods decide per image, so their numbers on the
# same S images hold for any stream order and batch size
per_image() {  # images of its one-corruption run, then run's arguments: skipped when that run was on S images
    local n=$1; shift
    [ "$S" = "$n" ] || run "$@"
}
per_image "$FT" s-sdnet18-auto "$S" all --model sdnet18 --lam auto
per_image "$FT" s-sdnet18-auto-bnprior "$S" all --model sdnet18 --lam auto --adapt bn-prior
per_image "$F" s-sdnet18-autoprior-bnprior "$S" all --model sdnet18 --lam auto --adapt bn-prior --calibration "$CAL_PRIOR"
per_image "$FT" s-resnet18 "$S" all --model resnet18
run mixed-resnet18-bn "$S" all --model resnet18 --adapt bn --stream mixed
run mixed-sdnet18-tent "$S" all --model sdnet18 --adapt tent --stream mixed
run batch1-resnet18-bn "$B1" all --model resnet18 --adapt bn --stream mixed --batch-size 1
run batch1-sdnet18-bn "$B1" all --model sdnet18 --adapt bn --stream mixed --batch-size 1
run batch1-resnet18-tent "$B1" all --model resnet18 --adapt tent --stream mixed --batch-size 1
run batch1-sdnet18-tent "$B1" all --model sdnet18 --adapt tent --stream mixed --batch-size 1
per_image "$F" s-sdnet18-bnprior "$S" all --model sdnet18 --adapt bn-prior
# the other batch methods and per-image remedies on the noise cells
run noise-sdnet18-tent "$F" all --model sdnet18 --adapt tent
run noise-resnet18-bn "$F" all --model resnet18 --adapt bn
run noise-sdnet18-bn "$F" all --model sdnet18 --adapt bn
run noise-sdnet18-bnprior "$F" all --model sdnet18 --adapt bn-prior
run noise-resnet18-bnprior "$F" all --model resnet18 --adapt bn-prior
# MEMO (hours a model on this CPU, so cut into sittings): reports/tta/run_memo.sh
