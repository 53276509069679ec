#!/usr/bin/env bash
# One command that proves the GPU path on a CUDA machine, in minutes:
#   1. build nerfhead._C for this GPU (in place, no install needed),
#   2. run the CUDA-marked kernel tests (kernels against their torch references),
#   3. `nerfhead bench kernels` (CUDA vs torch reference, ratios from one run),
#   4. `nerfhead bench render --synthetic --preset head` at 512x512 with a profile,
#   5. with --data: train the `head` preset for --train-minutes, then bench/profile the
#      trained run at 512x512.
# Every step runs even when an earlier one failed (a failed build still gives the torch
# figures); each writes its log under --out, and summary.txt lists each step's exit status.
#
# Usage: scripts/gpu_check.sh [--out DIR] [--data DATASET] [--train-minutes M] [--arch 9.0]
#                             [--skip-build]
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

OUT_DIR=${OUT:-gpu_check_out}
DATA=""
TRAIN_MIN=2
ARCH=${TORCH_CUDA_ARCH_LIST:-}
SKIP_BUILD=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --train-minutes) TRAIN_MIN=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

step() {  # step NAME TIMEOUT_S CMD...: run, log to NAME.log, record status and seconds
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name: $*" | tee -a "$SUMMARY"
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 25 "$OUT_DIR/$name.log"
  echo "--- $name: exit $rc after ${dt}s" | tee -a "$SUMMARY"
  return $rc
}

{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
  nvcc --version 2>&1 | tail -n 1
  echo "cpus $(nproc)"
} | tee "$OUT_DIR/env.txt"

if [ -z "$ARCH" ]; then
  ARCH=$($PY -c "import torch; m=torch.cuda.get_device_capability(); print(f'{m[0]}.{m[1]}')" 2>/dev/null || echo "")
fi
if [ "$SKIP_BUILD" = 0 ]; then
  # in place: nerfhead/_C*.so next to the sources, found through PYTHONPATH
  step build 900 env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" \
    $PY setup.py build_ext --inplace
fi
step extension 60 $PY -c "import torch, nerfhead._C as C; print('nerfhead._C loaded from', C.__file__)"
step cuda_tests 600 $PY -m pytest -m cuda -p no:cacheprovider -q tests/test_hashgrid.py tests/test_raymarch.py
step bench_kernels 600 $PY -m nerfhead bench kernels --json "$OUT_DIR/bench_kernels.json"
step bench_render_synthetic 300 $PY -m nerfhead bench render --synthetic --preset head \
  --resolution 512 --frames 20 --json "$OUT_DIR/bench_render_synthetic.json" \
  --profile "$OUT_DIR/profile_render_synthetic.txt"

if [ -n "$DATA" ]; then
  RUN="$OUT_DIR/run_head"
  step train_head $(( ${TRAIN_MIN%.*} * 60 + 240 )) $PY -m nerfhead train "$DATA" --config head \
    --out "$RUN" --max-minutes "$TRAIN_MIN" --no-progress \
    --set train.val_every=1000 --set train.checkpoint_every=100000 --set train.log_every=100
  [ -f "$RUN/metrics.jsonl" ] && cp "$RUN/metrics.jsonl" "$OUT_DIR/train_head_metrics.jsonl"
  step bench_render_run 300 $PY -m nerfhead bench render "$RUN" --resolution 512 --frames 20 \
    --json "$OUT_DIR/bench_render_run.json" --profile "$OUT_DIR/profile_render_run.txt"
fi
echo "summary in $SUMMARY"
cat "$SUMMARY"
