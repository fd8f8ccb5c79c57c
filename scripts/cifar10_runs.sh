#!/usr/bin/env bash
# Full-scale CIFAR-10 runs behind results/cifar10-*/: fit on all 50,000 train images,
# evaluate on all 10,000 test images. On 2 CPU cores the six runs of results/README.md took 9 minutes with
# the features already cached, and 25 minutes capturing every split afresh (an empty VISION_LENS_CACHE).
# Usage: scripts/cifar10_runs.sh [resnet20 resnet32 resnet44 inceptionv1]   (SHARED defaults to ../shared)
# The ResNets are the public checkpoints under $SHARED/weights/cifar10-resnets; inceptionv1 is the
# checkpoint committed under results/checkpoints/ (scripts/train_cifar_inception.py wrote it).
# WEIGHTS=random runs the seeded random-init control instead, into results/cifar10-<arch>-random-init/.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
for arch in "${@:-resnet20}"; do
  if [ "${WEIGHTS:-}" = random ]; then
    weights=random out="results/cifar10-$arch-random-init"
  elif [ "$arch" = inceptionv1 ]; then
    weights=results/checkpoints/cifar10-inceptionv1.th out="results/cifar10-$arch"
  else
    weights=$(ls "$SHARED"/weights/cifar10-resnets/"$arch"-*.th) out="results/cifar10-$arch"
  fi
  vision-lens run --model "cifar:$arch" --weights "$weights" --data "$SHARED/data/cifar10" \
    --out "$out" --overwrite
done
