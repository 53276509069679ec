#!/usr/bin/env bash
# Lip sync when the driving speech is quieter or louder than the training clip's
# (docs/benchmarks.md, "The level of the driving audio"):
#   bash scripts/level_bench.sh BENCH [RUN] [GAINS]
# BENCH: the folder of scripts/lipsync_bench.sh (its data_heldout/ and runs/); RUN: default
# BENCH/runs/mel_ow_head; GAINS: dB, default "-20 -10 +6". For each gain the held-out clip's
# aud.wav times 10^(dB/20) (16-bit WAV, clipped at full scale) drives the first 300 held-out
# frames, heard as given (--audio-level keep) and brought to the training level (match),
# scored against the real mouth: BENCH/level/eval_<dB>_<keep|match>/report.md.
set -euo pipefail
bench="${1:?usage: $0 BENCH [RUN] [GAINS]}"
run="${2:-$bench/runs/mel_ow_head}"
gains="${3:--20 -10 +6}"
out="$bench/level"
mkdir -p "$out"
for db in $gains; do
  wav="$out/held_${db}dB.wav"
  [ -f "$wav" ] || python3 - "$bench/data_heldout/aud.wav" "$db" "$wav" <<'PY'
import sys
import numpy as np
from nerfhead.audio.features import load_audio
from nerfhead.render.video import write_wav
x = load_audio(sys.argv[1])
write_wav(sys.argv[3], np.clip(x * 10 ** (float(sys.argv[2]) / 20), -1, 1))
PY
  for level in keep match; do
    ev="$out/eval_${db}dB_$level"
    [ -f "$ev/metrics.json" ] || nerfhead evaluate "$run" --audio-from "$bench/data_heldout" \
      --speech "$wav" --max-frames 300 --jitter-sources "" --audio-level "$level" --out "$ev" --threads 1
  done
done
