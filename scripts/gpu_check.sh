#!/usr/bin/env bash
# scripts/gpu_check.sh OUTDIR [options]: prove the GPU path of nerfhead in one call.
#
# For a lent CUDA machine that already has PyTorch with CUDA (any recent version; it is never
# touched: nothing here resolves dependencies), no network, and only what travelled with the
# working tree. In order, each part logged to OUTDIR/<part>.log:
#   wheels      (--wheels DIR) pip install --no-deps --no-index DIR/*.whl (packages it lacks)
#   env         torch / CUDA / GPU / nvcc versions, CPU count, missing Python packages
#   build       python3 setup.py build_ext --inplace (nerfhead._C, C++ + CUDA kernels)
#   extension   nerfhead info --json: which backends run here
#   tests       the CUDA-marked kernel tests: kernels vs torch references and CPU vs GPU
#               kernels at training sizes, defects, (--cpu: the CPU exactness tests)
#   bench_kernels            nerfhead bench kernels at training sizes (cuda vs torch, and
#                            vs nerfacc where it imports)
#   bench_render_synthetic   nerfhead bench render --synthetic --preset head at 512x512 --compare
#                            (head-only and head+torso+compositing FPS, ms per stage, host
#                            syncs and kernel launches per frame, of the inference path before
#                            issue 12 and the current one side by side, and torch.profiler
#                            tables of 3 frames of each)
#   train       (--data DIR) nerfhead train DIR --config head for --train-minutes
#               (iterations/s and validation PSNR from run/metrics.jsonl)
#   bench_render_run         nerfhead bench render --compare of that run at 512x512
#   bench_train              nerfhead bench train of that run: iterations/s and ms per phase
#                            of a step (data, grid update, forward, backward, optimizer), and
#                            on a GPU the torch.profiler table of 5 steps
#   render_video             nerfhead render of that run (val poses, the clip's audio,
#                            --render-frames x 10 frames) with --ahead 2 and --ahead 0: FPS
#                            with frames rendered ahead of the encoder and in turn
# After every part OUTDIR/summary.json is rewritten with the status and seconds of each part
# and every figure measured so far (scripts/gpu_check_summary.py), so a failing or killed
# part never loses the earlier ones. Every part runs even when an earlier one failed; the
# exit status is 1 when any part failed, 0 when all passed.
#
# --cpu is the dry run of every part that needs no GPU (CI runs it, tests/test_gpu_check.py):
# the C++ build, the CPU exactness tests, the benchmarks and training on the CPU, with sizes
# from the options below (defaults: small).
#
# Usage: scripts/gpu_check.sh OUTDIR [--cpu] [--data DIR] [--preset head] [--train-minutes 1.5]
#          [--train-iters N] [--train-set SECTION.FIELD=VALUE ...] [--wheels DIR] [--arch 9.0]
#          [--skip-build] [--tests EXPR] [--bench-points N] [--bench-rays N] [--bench-repeats N]
#          [--bench-levels L] [--only PART,PART,...]
#          [--render-resolution 512 (--cpu: 64)] [--render-frames 10] [--force]
#   --preset: model preset of training and of the synthetic render (head; --cpu: tiny);
#   --train-iters: a fixed number of steps instead of --train-minutes (--cpu default 40);
#   --tests: a pytest -k expression selecting among the tests; --only: run just these parts
#   (e.g. --only build,tests to rerun what failed); OUTDIR must be new or empty
#   (--force: reuse it, replacing what an earlier run wrote).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

OUT_DIR="" CPU=0 DATA="" PRESET="" TRAIN_MIN=1.5 TRAIN_ITERS="" WHEELS="" ARCH=${TORCH_CUDA_ARCH_LIST:-}
TRAIN_SET=() SKIP_BUILD=0 TESTS="" B_POINTS="" B_RAYS="" B_REPEATS="" B_LEVELS="" R_RES="" R_FRAMES=10 FORCE=0 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --train-minutes) TRAIN_MIN=$2; shift 2 ;;
    --train-iters) TRAIN_ITERS=$2; shift 2 ;;
    --train-set) TRAIN_SET+=(--set "$2"); shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --tests) TESTS=$2; shift 2 ;;
    --bench-points) B_POINTS=$2; shift 2 ;;
    --bench-rays) B_RAYS=$2; shift 2 ;;
    --bench-repeats) B_REPEATS=$2; shift 2 ;;
    --bench-levels) B_LEVELS=$2; shift 2 ;;
    --render-resolution) R_RES=$2; shift 2 ;;
    --render-frames) R_FRAMES=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    --only) ONLY=",$2,"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [ -z "$OUT_DIR" ]; then OUT_DIR=$1; shift; else echo "gpu_check: one OUTDIR only, got also $1" >&2; exit 2; fi ;;
  esac
done
if [ -z "$OUT_DIR" ]; then echo "gpu_check: give OUTDIR (see --help)" >&2; exit 2; fi
if [ -n "$DATA" ] && [ ! -f "$DATA/transforms_train.json" ]; then
  echo "gpu_check: --data $DATA is not a dataset folder (no transforms_train.json); make one with nerfhead preprocess" >&2
  exit 2
fi
if [ -n "$WHEELS" ] && ! ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  echo "gpu_check: --wheels $WHEELS holds no .whl file" >&2; exit 2
fi
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
if [ "$FORCE" = 0 ] && [ -n "$(ls -A "$OUT_DIR")" ]; then
  echo "gpu_check: $OUT_DIR is not empty (an earlier run?); give a new OUTDIR or --force" >&2
  exit 2
fi
rm -rf "$OUT_DIR/run" "$OUT_DIR/steps.tsv" "$OUT_DIR/summary.json" "$OUT_DIR/tests.xml"
: > "$OUT_DIR/steps.tsv"

if [ "$CPU" = 1 ]; then
  MODE=cpu DEV=cpu
  PRESET=${PRESET:-tiny} TRAIN_ITERS=${TRAIN_ITERS:-40} R_RES=${R_RES:-64} B_TRAIN_STEPS=4
  TEST_FILES="tests/test_kernels_exact.py tests/test_kernel_defects.py"
  TEST_MARK="not cuda and not slow"
else
  MODE=gpu DEV=cuda
  PRESET=${PRESET:-head} R_RES=${R_RES:-512} B_TRAIN_STEPS=50
  TEST_FILES="tests/test_kernels_exact.py tests/test_kernel_defects.py tests/test_hashgrid.py tests/test_raymarch.py
              tests/test_raymarch_fixed.py tests/test_fast_render.py"
  TEST_MARK="cuda"
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" NERFHEAD_OFFLINE=1
FAILED=0

summarize() { $PY scripts/gpu_check_summary.py "$OUT_DIR" "$@" || echo "gpu_check: summary failed" >&2; }

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to NAME.log, record, summarize
  local name=$1 limit=$2; shift 2
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then return 0; fi
  local t0; t0=$(date +%s)
  echo "=== $name: $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  [ $rc = 124 ] && echo "gpu_check: $name stopped after its $limit s limit" >> "$OUT_DIR/$name.log"
  local dt=$(( $(date +%s) - t0 ))
  tail -n 15 "$OUT_DIR/$name.log"
  echo "--- $name: exit $rc after ${dt}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$name.log" >> "$OUT_DIR/steps.tsv"
  [ $rc = 0 ] || FAILED=1
  summarize
  return $rc
}

if [ -n "$WHEELS" ]; then
  step wheels 300 $PY -m pip install --no-deps --no-index --no-build-isolation "$WHEELS"/*.whl
fi

step env 120 $PY - "$MODE" "$OUT_DIR/env.json" <<'EOF'
import importlib, json, os, platform, shutil, subprocess, sys, time
mode, path = sys.argv[1], sys.argv[2]
import torch
def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:
        return f"unavailable ({e})"
env = {"mode": mode, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "nvidia_smi": run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
                     if shutil.which("nvidia-smi") else None,
       "nvcc": run(["nvcc", "--version"]).splitlines()[-1:] if shutil.which("nvcc") else None,
       "git_commit": run(["git", "rev-parse", "HEAD"]) or None,
       "git_changed_files": len(run(["git", "status", "--porcelain"]).splitlines()) if shutil.which("git") else None}
# what nerfhead needs beside torch to build, test, train and render. Only render_video (and
# bench render's H.264 encode timing, "not timed" without it) needs imageio_ffmpeg, and
# onnxruntime + openwakeword's two ONNX models for the 'ow' features that `nerfhead render`
# computes from --audio for a run trained on mel+ow
mods = ["numpy", "scipy", "cv2", "yaml", "tqdm", "tensorboard", "pytest", "ninja", "imageio_ffmpeg",
        "nerfacc", "onnxruntime", "openwakeword"]
env["packages"] = {}
for m in mods:
    try:
        env["packages"][m] = str(getattr(importlib.import_module(m), "__version__", "installed"))
    except Exception as e:
        env["packages"][m] = f"missing ({type(e).__name__})"
json.dump(env, open(path, "w"), indent=1)
print(json.dumps(env, indent=1))
missing = [m for m in mods[:6] if env["packages"][m].startswith("missing")]
if mode == "gpu" and not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (use --cpu for the dry run)")
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}: carry their wheels (--wheels DIR)")
EOF

if [ -z "$ARCH" ] && [ "$MODE" = gpu ]; then
  ARCH=$($PY -c "import torch; m = torch.cuda.get_device_capability(); print(f'{m[0]}.{m[1]}')" 2>/dev/null || echo "")
fi
if [ "$SKIP_BUILD" = 0 ]; then
  # in place: nerfhead/_C*.so next to the sources, found through PYTHONPATH
  step build 600 env ${ARCH:+TORCH_CUDA_ARCH_LIST="$ARCH"} MAX_JOBS="$(nproc)" $PY setup.py build_ext --inplace
fi

step extension 120 $PY - "$MODE" "$OUT_DIR/info.json" <<'EOF'
import json, sys
mode, path = sys.argv[1], sys.argv[2]
from nerfhead.info import collect
info = collect()
json.dump(info, open(path, "w"), indent=1)
print(json.dumps({"extension": info["extension"], "backends": info["backends"]}, indent=1))
need = "cuda" if mode == "gpu" else "cpu"
why = [f"{fam} {need}: {b[need]}" for fam, b in info["backends"].items() if b[need]]
if why:
    sys.exit("gpu_check: the kernels cannot run here: " + "; ".join(why))
EOF

step tests 420 $PY -m pytest -q -p no:cacheprovider -rfE -m "$TEST_MARK" ${TESTS:+-k "$TESTS"} \
  --junitxml="$OUT_DIR/tests.xml" $TEST_FILES

BENCH=(--device "$DEV" --json "$OUT_DIR/bench_kernels.json")
[ -n "$B_POINTS" ] && BENCH+=(--points "$B_POINTS")
[ -n "$B_RAYS" ] && BENCH+=(--rays "$B_RAYS")
[ -n "$B_REPEATS" ] && BENCH+=(--repeats "$B_REPEATS")
[ -n "$B_LEVELS" ] && BENCH+=(--levels "$B_LEVELS")
[ "$MODE" = gpu ] && BENCH+=(--full)
step bench_kernels 300 $PY -m nerfhead bench kernels "${BENCH[@]}"

PROFILE=()
[ "$MODE" = gpu ] && PROFILE=(--profile "$OUT_DIR/profile_render_synthetic.txt")
step bench_render_synthetic 240 $PY -m nerfhead bench render --synthetic --preset "$PRESET" \
  --resolution "$R_RES" --frames "$R_FRAMES" --device "$DEV" --json "$OUT_DIR/bench_render_synthetic.json" \
  --compare ${PROFILE[@]+"${PROFILE[@]}"}

if [ -n "$DATA" ]; then
  RUN="$OUT_DIR/run"
  TRAIN=(--config "$PRESET" --out "$RUN" --device "$DEV" --no-progress --set train.checkpoint_every=1000000
         --set train.log_every=50 ${TRAIN_SET[@]+"${TRAIN_SET[@]}"})
  if [ -n "$TRAIN_ITERS" ]; then
    TRAIN+=(--iters "$TRAIN_ITERS" --set train.val_every=$(( (TRAIN_ITERS + 1) / 2 )))
    LIMIT=900
  else
    TRAIN+=(--max-minutes "$TRAIN_MIN" --set train.val_every=1000)
    LIMIT=$($PY -c "print(int(float('$TRAIN_MIN') * 60) + 240)")
  fi
  step train "$LIMIT" $PY -m nerfhead train "$DATA" "${TRAIN[@]}"
  if ls "$RUN"/checkpoints/*.pt > /dev/null 2>&1; then
    RUN_PROFILE=()
    [ "$MODE" = gpu ] && RUN_PROFILE=(--profile "$OUT_DIR/profile_render_run.txt")
    step bench_render_run 240 $PY -m nerfhead bench render "$RUN" --resolution "$R_RES" --frames "$R_FRAMES" \
      --device "$DEV" --json "$OUT_DIR/bench_render_run.json" --compare ${RUN_PROFILE[@]+"${RUN_PROFILE[@]}"}
    TRAIN_PROFILE=()
    [ "$MODE" = gpu ] && TRAIN_PROFILE=(--profile "$OUT_DIR/profile_train.txt")
    step bench_train 240 $PY -m nerfhead bench train "$RUN" --device "$DEV" --steps "$B_TRAIN_STEPS" \
      --json "$OUT_DIR/bench_train.json" ${TRAIN_PROFILE[@]+"${TRAIN_PROFILE[@]}"}
    # offline rendering: frames rendered ahead of the encoder (--ahead 2) against in turn (0)
    [ -f "$DATA/aud.wav" ] && step render_video 300 bash -c 'for a in 2 0; do "$0" -m nerfhead render "$1" --audio "$2/aud.wav" \
      --poses val --max-frames "$3" --device "$4" --ahead $a --out "$5/render_ahead$a.mp4" || exit 1; done' \
      "$PY" "$RUN" "$DATA" $(( R_FRAMES * 10 )) "$DEV" "$OUT_DIR"
  fi
fi

summarize --print
exit $FAILED
