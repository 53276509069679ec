"""HuBERT-large's cost per second of audio on this machine (docs/benchmarks.md, "HuBERT
features"): the real architecture with random weights (the time does not depend on the
weights' values, which cannot be downloaded everywhere), through
nerfhead.audio.hubert.hubert_stream. Usage: python3 scripts/hubert_cost.py [THREADS]"""
import time, sys, numpy as np, torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
from nerfhead.audio import hubert as H
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
cfg = HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                   conv_bias=True)
model = HubertModel(cfg).eval()
print("params", sum(p.numel() for p in model.parameters()) / 1e6, "M")
ext = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True)
H.load_hubert = lambda weights_dir=None, device=None: (ext, model)
x = (0.1 * np.random.default_rng(0).standard_normal(60 * 16000)).astype(np.float32)
t = time.perf_counter(); f = H.hubert_stream(x); dt = time.perf_counter() - t
print(f"60 s of audio -> {f.shape} in {dt:.1f} s with {threads} threads: {dt / 60:.2f} s per s of audio")
