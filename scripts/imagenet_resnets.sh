#!/usr/bin/env bash
# torchvision's ImageNet ResNets, written to results/imagenet-<arch>/.
# Lenses are fitted on a seeded subset of train (FIT_LIMIT, default 10 images per class)
# and evaluated on val (EVAL_LIMIT, default all 50,000). Needs a GPU for these sizes and
# the published weights (downloaded on first use; offline, set WEIGHTS_DIR to a folder
# holding torchvision's files, e.g. resnet50-11ad3fa6.pth).
# Usage: IMAGENET=/data/imagenet scripts/imagenet_resnets.sh [resnet18 resnet34 resnet50 resnet101 resnet152]
#        (default: resnet50; $IMAGENET/{train,val}/<synset>/<image>)
set -euo pipefail
if [[ -z "${IMAGENET:-}" ]]; then
  echo "usage: IMAGENET=/path/to/imagenet $0 [resnet18 resnet34 resnet50 resnet101 resnet152]" >&2
  echo "       (IMAGENET: a folder with train/ and val/, one subfolder per synset, e.g. val/n01440764/)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
FIT_LIMIT=${FIT_LIMIT:-10000}
EVAL_LIMIT=${EVAL_LIMIT:-50000}
for arch in "${@:-resnet50}"; do
  weights=pretrained
  if [[ -n "${WEIGHTS_DIR:-}" ]]; then
    weights=$(ls "$WEIGHTS_DIR/$arch"-*.pth)
  fi
  vision-lens run --model "torchvision:$arch" --weights "$weights" --data "$IMAGENET" \
    --fit-split train --eval-split val --fit-limit "$FIT_LIMIT" --eval-limit "$EVAL_LIMIT" \
    --workers "${WORKERS:-8}" --out "results/imagenet-$arch" --overwrite
done
