#!/usr/bin/env bash
# Lip-sync benchmark (issue 9): does the mouth follow held-out speech?
#
# 1. preprocess the 300-s GRID s1 clip as two clips: the first TRAIN_SENTENCES sentences
#    (default 80, i.e. the first 240 s) to train, the rest (the last 60 s) held out;
# 2. per audio feature kind (--kind mel+ow|mel|ow|all; mel+ow is what data.audio=auto picks
#    where both feature files exist): train the `tiny` preset (+ a `lips` stage
#    with --lips-iters > 0);
# 3. `nerfhead evaluate --audio-from HELD_OUT`: render every held-out frame from its own audio
#    and pose and compare the mouth with the real one (report.md leads with lip sync: render/GT
#    mouth-opening correlation, amplitude ratio, energy proxy of render and GT, LMD on speech
#    and silence; mouth_strip.png and mouth_opening.png beside it);
# 3b. the same held-out frames driven by their speech in another voice (`--voice-shift`,
#    default +3 semitones, a shift the preprocessed voices of train.voice_augment do not
#    contain, about a man's formants towards a woman's), scored against the
#    real mouth: lip sync for a voice the model never heard, with ground truth;
# 3c. the same held-out frames driven by their words said by other voices (`nerfhead respeak`:
#    speech synthesisers, each word fitted into the span GRID's word timings give it;
#    `--respeak VOICES`, default flite:slt,flite:awb,espeak-ng:en-us+f3; skipped with a note
#    where flite/espeak-ng are not installed: apt install flite espeak-ng), scored against
#    the real mouth: other speakers, with ground truth at the scale of words;
# 4. `nerfhead evaluate --drive OTHER_SPEECH`: the same model driven by another speaker
#    (no GT video: energy proxy and opening spread), and `--drive OTHER_VIDEO` (another
#    speaker's footage, by default the 8-s HDTF clip: the rendered mouth opening correlated
#    with that speaker's, a reference the energy proxy cannot give on fluent speech);
# 5. OUT/summary.md: one row per kind and stage.
#
# Targets at this scale (issue 9): opening correlation >= 0.8, energy proxy at offset 0 >= 90%
# of the GT's, amplitude ratio 0.8-1.2.
#
# Everything is resumable: preprocessing skips finished steps, training resumes from its last
# checkpoint, evaluation reruns only when its metrics.json is missing.
# CPU (2 cores, shared): preprocessing ~15-60 min, tiny 16k iterations ~20-100 min per kind,
# evaluation of 1500 frames ~15-60 min. Use a GPU with --device cuda.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
shared="${NERFHEAD_SHARED:-$here/../shared}"
video="$shared/data/video/grid_s1_300s.mp4"
clips="$shared/data/video/grid_s1_300s.clips.txt"
align="$shared/data/video/grid_s1_align"
drive_audio="$shared/data/audio/eng_60s.wav"
drive_video="$shared/data/video/hdtf_katiehill_8s.mp4"
out="runs/lipsync_bench"
kind="mel+ow"
iters=16000
lips_iters=0
train_sentences=80
threads=1
device="cpu"
max_eval_frames=""
voice_shift=3
respeak_voices="flite:slt,flite:awb,espeak-ng:en-us+f3"
nerfhead="${NERFHEAD:-python3 -m nerfhead}"

usage() {
  sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  cat <<EOF
usage: $0 [--kind mel+ow|mel|ow|all] [--iters N] [--lips-iters N] [--out DIR] [--video MP4]
          [--clips TXT] [--train-sentences K] [--drive WAV] [--drive-video MP4] [--device cpu|cuda]
          [--threads N] [--max-eval-frames N] [--voice-shift SEMITONES (0: none)]
          [--align DIR] [--respeak ENGINE:VOICE,... ("": none)]
defaults: --kind $kind --iters $iters --lips-iters $lips_iters --out $out
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --kind) kind="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --lips-iters) lips_iters="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --video) video="$2"; shift 2 ;;
    --clips) clips="$2"; shift 2 ;;
    --train-sentences) train_sentences="$2"; shift 2 ;;
    --drive) drive_audio="$2"; shift 2 ;;
    --drive-video) drive_video="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --max-eval-frames) max_eval_frames="$2"; shift 2 ;;
    --voice-shift) voice_shift="$2"; shift 2 ;;
    --align) align="$2"; shift 2 ;;
    --respeak) respeak_voices="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "lipsync_bench: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$kind" in
  mel|ow|mel+ow) kinds=("$kind") ;; all) kinds=(mel+ow mel ow) ;;
  *) echo "lipsync_bench: --kind must be mel+ow, mel, ow or all (got $kind)" >&2; exit 2 ;;
esac
for f in "$video" "$clips" "$drive_audio" "$drive_video"; do
  [ -f "$f" ] || { echo "lipsync_bench: $f not found (set NERFHEAD_SHARED or pass the path)" >&2; exit 2; }
done
export NERFHEAD_WEIGHTS="${NERFHEAD_WEIGHTS:-$shared/weights}"
mkdir -p "$out"

# Sentence boundaries: the clip joins the sentences of $clips back to back, equally long.
read -r total duration split <<<"$(python3 - "$video" "$clips" "$train_sentences" <<'EOF'
import subprocess, sys, imageio_ffmpeg, re
video, clips, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
n = sum(1 for line in open(clips) if line.strip())
err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", video],
                     capture_output=True, text=True).stderr
h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err).groups()
dur = int(h) * 3600 + int(m) * 60 + float(s)
if not 0 < k < n:
    sys.exit(f"--train-sentences {k}: the clip has {n} sentences")
print(n, dur, round(dur * k / n, 3))
EOF
)"
echo "== $video: $total sentences in ${duration}s; train on the first ${split}s, hold out the rest"

prep() {  # prep DIR START LENGTH [--set ...]
  local args=(preprocess "$video" --out "$1" --start-seconds "$2" --max-seconds "$3"
              --set landmarks.max_gap=16 "${@:4}")  # frames 3375-3386 of the GRID clip are corrupt
  $nerfhead "${args[@]}"
}
prep "$out/data_train" 0 "$split"
# the held-out clip takes the training clip's face shape and focal: one head scale for both
prep "$out/data_heldout" "$split" "$(python3 -c "print($duration - $split)")" \
  --set face_fit.reference="$out/data_train"

# the held-out sentences' words on the held-out clip's clock, said again by other voices
# (train_words.txt: the training sentences' words, for `--set audio.respeak_words=` of the
# training clip: docs/benchmarks.md, "Lip sync for other speakers")
respeak_files=()
if [ -n "$respeak_voices" ] && [ -d "$align" ]; then
  words="$out/heldout_words.txt"
  python3 - "$clips" "$align" "$train_sentences" "$duration" "$total" "$out" <<'EOF'
import sys
from pathlib import Path
clips, align, split, duration, total, out = sys.argv[1:7]
split, each = int(split), float(duration) / int(total)
lines = {"train_words.txt": [], "heldout_words.txt": []}
for row in open(clips):
    if not row.strip():
        continue
    k, name = int(row.split()[0]), row.split()[1]
    first, part = (0, "train_words.txt") if k < split else (split, "heldout_words.txt")
    off = (k - first) * each  # each clip's own clock
    # GRID .align: start end word, in 1/25000 s from the sentence's start
    for a in (Path(align) / (Path(name).stem + ".align")).read_text().splitlines():
        if a.strip():
            s, e, w = a.split()
            lines[part].append(f"{off + int(s) / 25000:.4f} {off + int(e) / 25000:.4f} {w}")
for name, rows in lines.items():
    (Path(out) / name).write_text("\n".join(rows) + "\n")
EOF
  voice_args=()
  for v in ${respeak_voices//,/ }; do
    voice_args+=(--voice "$v")
    respeak_files+=("$(echo "$v" | tr ':' '_').wav")
  done
  missing=0
  for f in "${respeak_files[@]}"; do [ -f "$out/respeak/$f" ] || missing=1; done
  if [ "$missing" = 1 ] && ! $nerfhead respeak "$words" --like "$out/data_heldout" \
      "${voice_args[@]}" --out "$out/respeak"; then
    echo "== skipping the re-spoken voices: nerfhead respeak failed (above); install the" \
         "synthesisers (apt install flite espeak-ng) or pass --respeak ''" >&2
    respeak_files=()
  fi
fi

maxf=()
[ -n "$max_eval_frames" ] && maxf=(--max-frames "$max_eval_frames")
runs=()
for k in "${kinds[@]}"; do
  missing=""
  for part in ${k/+/ }; do  # mel+ow reads aud_mel.npy and aud_ow.npy
    [ -f "$out/data_train/aud_$part.npy" ] || missing="$missing aud_$part.npy"
  done
  if [ -n "$missing" ]; then
    echo "== skipping $k:$missing missing in $out/data_train (feature not installed?)" >&2
    continue
  fi
  head="$out/runs/${k/+/_}_head"
  $nerfhead train "$out/data_train" --config tiny --out "$head" --iters "$iters" \
    --device "$device" --threads "$threads" --set data.audio="$k" --no-progress
  runs+=("$head")
  if [ "$lips_iters" -gt 0 ]; then
    lips="$out/runs/${k/+/_}_lips"
    $nerfhead train "$out/data_train" --config lips --init "$head" --out "$lips" \
      --iters "$lips_iters" --device "$device" --threads "$threads" --set data.audio="$k" \
      --set data.image_size=128 --set data.patch_size=16 --set data.num_rays=512 \
      --set data.cache_size=64 --no-progress
    runs+=("$lips")
  fi
done

for r in "${runs[@]}"; do
  name="$(basename "$r")"
  ev="$out/eval/$name"
  [ -f "$ev/metrics.json" ] || $nerfhead evaluate "$r" --audio-from "$out/data_heldout" \
    --out "$ev" --device "$device" --threads "$threads" "${maxf[@]}"
  if [ "$voice_shift" != 0 ]; then
    vs="$out/eval/${name}_voice_$voice_shift"
    [ -f "$vs/metrics.json" ] || $nerfhead evaluate "$r" --audio-from "$out/data_heldout" \
      --voice-shift "$voice_shift" --jitter-sources "" --out "$vs" --device "$device" \
      --threads "$threads" "${maxf[@]}"
  fi
  for f in "${respeak_files[@]}"; do
    rs="$out/eval/${name}_respeak_${f%.wav}"
    [ -f "$rs/metrics.json" ] || $nerfhead evaluate "$r" --audio-from "$out/data_heldout" \
      --speech "$out/respeak/$f" --jitter-sources "" --out "$rs" --device "$device" \
      --threads "$threads" "${maxf[@]}"
  done
  for d in "$drive_audio" "$drive_video"; do
    dr="$out/eval/${name}_drive_$(basename "${d%.*}")"
    [ -f "$dr/metrics.json" ] || $nerfhead evaluate "$r" --drive "$d" \
      --out "$dr" --device "$device" --threads "$threads" "${maxf[@]}"
  done
done

python3 - "$out" "$(basename "${drive_audio%.*}")" "$(basename "${drive_video%.*}")" "$voice_shift" \
  "$(IFS=,; echo "${respeak_files[*]}")" "${runs[@]}" <<'EOF'
import json, sys
from pathlib import Path
out, audio_name, video_name, shift, respoken, runs = (Path(sys.argv[1]), sys.argv[2], sys.argv[3],
                                                      sys.argv[4], sys.argv[5], sys.argv[6:])
voices = [v[:-4] for v in respoken.split(",") if v]
f = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"
rows = ["| run | opening r (≥0.8) | amplitude ratio (0.8-1.2) | proxy @0 render / GT | "
        "LMD speech / silence | PSNR / mouth PSNR | PSNR as delivered | "
        f"held out in another voice ({shift} semitones): opening r, amplitude | "
        f"re-spoken by {', '.join(voices) or 'no voices'}: opening r each (mean), mean amplitude | "
        f"driven by {audio_name}: proxy @0, amplitude | driven by {video_name}: opening r with "
        "its speaker, proxy @0 render / footage |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
read = lambda p: json.loads(p.read_text()) if p.is_file() else {}
for r in runs:
    name = Path(r).name
    m = json.loads((out / "eval" / name / "metrics.json").read_text())
    d = read(out / "eval" / f"{name}_drive_{audio_name}" / "metrics.json")
    v = read(out / "eval" / f"{name}_drive_{video_name}" / "metrics.json")
    vo = read(out / "eval" / f"{name}_voice_{shift}" / "metrics.json").get("mouth_opening", {})
    ft = v.get("footage") or {}
    rsp = [read(out / "eval" / f"{name}_respeak_{vv}" / "metrics.json").get("mouth_opening", {})
           for vv in voices]
    rr = [x.get("correlation") for x in rsp]
    ra = [x.get("amplitude_ratio") for x in rsp if x.get("amplitude_ratio") is not None]
    mean = lambda xs: sum(xs) / len(xs) if xs and None not in xs else None  # noqa: E731
    respoken_cell = (" / ".join(f(x) for x in rr) + f" ({f(mean(rr))}), {f(mean(ra), 2)}"
                     if voices else "n/a")
    mo, px, full = m.get("mouth_opening", {}), m.get("lipsync_proxy", {}), m["modes"]["full"]
    pr, pg = px.get("render", {}), px.get("gt", {})
    zr, zg = pr.get("zero_offset_correlation"), pg.get("zero_offset_correlation")
    share = f" ({100 * zr / zg:.0f}%)" if zr and zg and zg > 0 else ""
    dz = d.get("lipsync_proxy", {}).get("zero_offset_correlation")
    rows.append(
        f"| {name} (step {m['step']}) | {f(mo.get('correlation'))} | {f(mo.get('amplitude_ratio'), 2)} | "
        f"{f(zr)} / {f(zg)}{share} | {f(full.get('lmd_speech', {}).get('mean'), 2)} / "
        f"{f(full.get('lmd_silence', {}).get('mean'), 2)} | {f(full['psnr'].get('mean'), 2)} / "
        f"{f(full['mouth_psnr'].get('mean'), 2)} | {f(m.get('delivered', {}).get('psnr', {}).get('mean'), 2)} | "
        f"{f(vo.get('correlation'))}, {f(vo.get('amplitude_ratio'), 2)} | {respoken_cell} | {f(dz)}, {f(d.get('amplitude_vs_speaker'), 2)} | {f(ft.get('opening_correlation'))}, "
        f"{f(v.get('lipsync_proxy', {}).get('zero_offset_correlation'))} / "
        f"{f((ft.get('footage_proxy') or {}).get('zero_offset_correlation'))} |")
text = "# Lip-sync benchmark\n\n" + "\n".join(rows) + "\n\nPer run: eval/<run>/report.md (held-out " \
       "sentences), eval/<run>_voice_*/report.md (the same in another voice), " \
       "eval/<run>_respeak_*/report.md (its words said by other voices), " \
       "eval/<run>_drive_*/report.md (other speakers).\n"
(out / "summary.md").write_text(text)
print(text)
EOF
