#!/usr/bin/env bash
# Full-scale CIFAR-10 runs behind results/cifar10-*/: fit on all 50,000 train images,
# evaluate on all 10,000 test images. On 2 CPU cores the six runs of results/README.md took 9 minutes with
# the features already cached, and 25 minutes capturing every split afresh (an empty VISION_LENS_CACHE).
# Usage: scripts/cifar10_runs.sh [resnet20 resnet32 resnet44 inceptionv1 preact_resnet20 plain20 vit]
# (SHARED defaults to ../shared). The ResNets are the public checkpoints under $SHARED/weights/cifar10-resnets;
# the models trained here are the checkpoints committed under results/checkpoints/ (scripts/train_cifar.py
# wrote them). Each run writes results/cifar10-<arch>/, with _ written as - (cifar10-preact-resnet20).
# WEIGHTS=random runs the seeded random-init control instead, into results/cifar10-<arch>-random-init/.
# RECIPE=tuned-lens fits the translators by tuned-lens's own recipe, into results/cifar10-<arch>[-random-init]-
# tuned-lens-recipe/; FRONTIER=1 then also runs `vision-lens frontier` on each run (the L2 sweep, frontier.json).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
for arch in "${@:-resnet20}"; do
  name=${arch//_/-}
  if [ "${WEIGHTS:-}" = random ]; then
    weights=random out="results/cifar10-$name-random-init"
  elif [ -e "results/checkpoints/cifar10-$name.th" ]; then
    weights="results/checkpoints/cifar10-$name.th" out="results/cifar10-$name"
  else
    weights=$(ls "$SHARED"/weights/cifar10-resnets/"$arch"-*.th) out="results/cifar10-$name"
  fi
  recipe=()
  if [ "${RECIPE:-optimum}" = tuned-lens ]; then
    recipe=(--recipe tuned-lens) out="$out-tuned-lens-recipe"
  fi
  vision-lens run --model "cifar:$arch" --weights "$weights" --data "$SHARED/data/cifar10" \
    --out "$out" --overwrite "${recipe[@]}"
  if [ "${FRONTIER:-0}" = 1 ]; then
    vision-lens frontier "$out"
  fi
done
