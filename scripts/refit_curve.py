"""The audio encoder's refit for other voices, measured along the way (docs/benchmarks.md,
"A short clip end to end, and a refit not kept"): for a trained head or lips run whose
dataset has other voices, refit the encoder as trained (train.voice_encoder_steps) and print
the validation frames' errors every CHECK_EVERY steps, without changing the run.

Usage: python3 scripts/refit_curve.py RUN [STEPS=3000] [CHECK_EVERY=250]"""
import sys

import numpy as np
import torch

from nerfhead.data.dataset import TalkingHeadDataset
from nerfhead.train.checkpoint import load_run
from nerfhead.train.voice_encoder import refit_audio_encoder

torch.set_num_threads(1)
run_dir = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
every = int(sys.argv[3]) if len(sys.argv) > 3 else 250
run = load_run(run_dir, audio_encoder="trained", prune_floaters=False)
cfg, t = run.configs["data"], run.configs["train"]
train = TalkingHeadDataset(run.dataset_dir, cfg, "train")
val = TalkingHeadDataset(run.dataset_dir, cfg, "val")
_, fit = refit_audio_encoder(run.model.audio_encoder, train.audio, train.audio_voices,
                             train.aud_ids, steps=steps, own_fraction=t.voice_encoder_own_fraction,
                             seed=t.seed, check_frames=val.aud_ids, check_every=every)
for step, others, own in fit.curve:
    print(f"step {step}: other voices {others:.3f}, own voice {own:.3f}, combined {others + own:.3f}")
print(f"trained encoder: other voices {np.mean(fit.error_before):.3f} ({fit.checked_on})")
