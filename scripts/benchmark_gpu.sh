#!/usr/bin/env bash
# The GPU benchmark: the pipeline against its floor (scripts/benchmark_pipeline.py) for torchvision's
# ResNet-50 and GoogLeNet with random weights, on synthetic 224x224 JPEGs in 1,000 synset folders
# (scripts/make_synthetic_images.py). Runs from a checkout, installed or not (PYTHONPATH is set to it).
# Usage: scripts/benchmark_gpu.sh OUT [MODEL ...]   (default models: torchvision:resnet50 torchvision:googlenet)
# Writes OUT/environment.txt, and per model OUT/<arch>-<precision>.json (the benchmark's JSON) and
# OUT/<arch>-<precision>.log (its stderr). A model that fails or passes MODEL_TIMEOUT leaves its log, and
# the next model still runs. Environment knobs, with their defaults: DATA (a fresh temporary folder),
# FIT_PER_CLASS=10, EVAL_PER_CLASS=5, WORKERS (every CPU), PRECISION=fp32 (or bf16), MODEL_TIMEOUT=270
# seconds, FIT_LIMIT / EVAL_LIMIT (default: every image), FLOOR_OPTIONS (options of the floor search, e.g.
# "--floor-batch-sizes 128 256 --floor-workers 8 16"; default: the benchmark's own grid) and PYTHON=python3.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/benchmark_gpu.sh OUT [MODEL ...]}
shift
[ $# -gt 0 ] || set -- torchvision:resnet50 torchvision:googlenet
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
workers=${WORKERS:-$(nproc)}
precision=${PRECISION:-fp32}
data=${DATA:-$(mktemp -d)/synthetic}
mkdir -p "$out"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  echo "cpus $(nproc) workers $workers precision $precision"
} > "$out/environment.txt"

if [ ! -d "$data" ]; then
  "$python" scripts/make_synthetic_images.py --out "$data" --fit-per-class "${FIT_PER_CLASS:-10}" \
    --eval-per-class "${EVAL_PER_CLASS:-5}" --workers "$workers" >> "$out/environment.txt" || exit 1
fi

limits=()
[ -z "${FIT_LIMIT:-}" ] || limits+=(--fit-limit "$FIT_LIMIT")
[ -z "${EVAL_LIMIT:-}" ] || limits+=(--eval-limit "$EVAL_LIMIT")
status=0
for model in "$@"; do
  name="${model#*:}-$precision"
  echo "== $model ($precision)"
  # One repeat and one round of the floor search: on a GPU the passes barely vary, and the device time is short.
  # scikit-learn is left out: at 1,000 classes it takes minutes per block.
  # shellcheck disable=SC2086  # FLOOR_OPTIONS is a list of options
  timeout "${MODEL_TIMEOUT:-270}" "$python" scripts/benchmark_pipeline.py --model "$model" --weights random \
    --data "$data" --fit-split train --eval-split val --workers "$workers" --precision "$precision" \
    --repeats 1 --no-sklearn --floor-rounds 1 ${FLOOR_OPTIONS:-} "${limits[@]}" > "$out/$name.json" 2> "$out/$name.log"
  rc=$?
  echo "   exit $rc; $("$python" -c "import json, sys; r = json.load(open(sys.argv[1])); print('ratio', round(r['ratio'], 2),
'whole-run ratio', round(r['whole_run']['ratio'], 2), 'capture', round(r['capture']['fraction_of_floor'], 2),
'of the floor', r['floor'], 'images/s', {k: round(v) for k, v in r['images_per_s'].items()})" "$out/$name.json" \
    2>/dev/null || tail -3 "$out/$name.log")"
  [ $rc -eq 0 ] || status=1
done
exit $status
