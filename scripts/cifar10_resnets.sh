#!/usr/bin/env bash
# Full-scale CIFAR-10 runs behind results/cifar10-resnet*/: fit on all 50,000 train
# images, evaluate on all 10,000 test images. About 5 minutes per model on 2 CPU cores.
# Usage: scripts/cifar10_resnets.sh [resnet20 resnet32 resnet44]   (SHARED defaults to ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
for arch in "${@:-resnet20}"; do
  weights=$(ls "$SHARED"/weights/cifar10-resnets/"$arch"-*.th)
  vision-lens run --model "cifar:$arch" --weights "$weights" --data "$SHARED/data/cifar10" \
    --out "results/cifar10-$arch" --overwrite
done
