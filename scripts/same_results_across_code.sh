#!/usr/bin/env bash
# Does a change of the code change a result? The same small run of each CIFAR family under two checkouts,
# then every result file compared byte for byte (docs/development.md, "Rerunning the committed results").
#   scripts/same_results_across_code.sh OLD_CHECKOUT NEW_CHECKOUT [WORK]
# RUN_OPTIONS adds options to every run (RUN_OPTIONS="--recipe tuned-lens": the recipe's fits).
# Checkouts are folders (git worktree add --detach DIR REV); WORK defaults to a fresh temporary folder.
set -euo pipefail
old=$(cd "$1" && pwd) new=$(cd "$2" && pwd) work=${3:-$(mktemp -d)}
shared=${VISION_LENS_SHARED:-$(cd "$new/.." && pwd)/shared}
checkpoints=$new/results/checkpoints
runs=("cifar:resnet20 $shared/weights/cifar10-resnets/resnet20-12fca82f.th"
      "cifar:preact_resnet20 $checkpoints/cifar10-preact-resnet20.th"
      "cifar:vit $checkpoints/cifar10-vit.th"
      "cifar:inceptionv1 $checkpoints/cifar10-inceptionv1.th")
cd "$work"  # python -m puts the working folder first on sys.path: not a checkout, so PYTHONPATH decides
for side in old new; do
  code=$old; [ "$side" = new ] && code=$new
  for spec in "${runs[@]}"; do
    set -- $spec
    PYTHONPATH=$code python -m vision_lens run --model "$1" --weights "$2" --data "$shared/data/cifar10" \
      --fit-limit 400 --eval-limit 400 --cache-dir "$work/$side/cache" --out "$work/$side/${1#cifar:}" \
      ${RUN_OPTIONS:-}
  done
done
status=0
for spec in "${runs[@]}"; do
  set -- $spec; name=${1#cifar:}
  for file in aggregate_metrics.json aggregate_metrics_ci.json batches.jsonl layers.json \
              lenses/tuned/params.pt lenses/shared/params.pt lenses/linear_probe/params.pt; do
    if cmp -s "$work/old/$name/$file" "$work/new/$name/$file"; then echo "same       $name/$file"
    else echo "DIFFERENT  $name/$file"; status=1; fi
  done
done
exit $status
