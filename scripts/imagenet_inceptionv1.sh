#!/usr/bin/env bash
# InceptionV1 on ImageNet: torchvision's GoogLeNet and Lucid's InceptionV1 (through lucent),
# written to results/imagenet-googlenet/ and results/imagenet-lucent-inceptionv1/.
# Lenses are fitted on a seeded subset of train (FIT_LIMIT, default 10 images per class)
# and evaluated on val (EVAL_LIMIT, default all 50,000). Needs a GPU for these sizes and
# the published weights (downloaded on first use; offline, pass WEIGHTS_GOOGLENET /
# WEIGHTS_LUCENT as local files).
# Usage: IMAGENET=/data/imagenet scripts/imagenet_inceptionv1.sh   ($IMAGENET/{train,val}/<synset>/<image>)
set -euo pipefail
if [[ -z "${IMAGENET:-}" ]]; then
  echo "usage: IMAGENET=/path/to/imagenet $0   (a folder with train/ and val/, one subfolder per synset, e.g. val/n01440764/)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
FIT_LIMIT=${FIT_LIMIT:-10000}
EVAL_LIMIT=${EVAL_LIMIT:-50000}
common=(--data "$IMAGENET" --fit-split train --eval-split val --fit-limit "$FIT_LIMIT" --eval-limit "$EVAL_LIMIT"
        --workers "${WORKERS:-8}" --overwrite)
vision-lens run --model torchvision:googlenet --weights "${WEIGHTS_GOOGLENET:-pretrained}" \
  --out results/imagenet-googlenet "${common[@]}"
# lucent's outputs 1 … 1000 are the devkit synsets (the adapter maps the folders onto them); 0 and 1001 … 1007 are unused.
vision-lens run --model lucent:inceptionv1 --weights "${WEIGHTS_LUCENT:-pretrained}" \
  --out results/imagenet-lucent-inceptionv1 "${common[@]}"
