"""``nerfhead info``: what this machine can run and, for what it cannot, why; ``nerfhead info
RUN``: what a run folder holds (``nerfhead.train.describe``)."""

from __future__ import annotations

import argparse
import importlib
import platform


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN",
                   help="a run folder: its stage and step, dataset, audio encoder, floaters, "
                        "validation PSNR and lip-sync checks (instead of this machine's info)")
    p.add_argument("--json", action="store_true", help="print as JSON")


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        return f"unavailable ({type(e).__name__}: {e})"
    if hasattr(mod, "__version__"):
        return str(mod.__version__)
    from importlib.metadata import PackageNotFoundError, version

    try:  # a package without __version__ (pocketsphinx): its distribution's
        return version(module)
    except PackageNotFoundError:
        return "installed"


def collect() -> dict:
    import torch

    from nerfhead import __version__
    from nerfhead.ops._loader import extension_available, extension_error, extension_with_cuda
    from nerfhead.ops.backend import available_backends

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return {
        "nerfhead": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "devices": devices,
        "extension": ("loaded (C++ kernels" + (" and CUDA kernels)" if extension_with_cuda() else
                                               ", built without its CUDA part)")
                      if extension_available() else extension_error()),
        "backends": {fam: available_backends(fam) for fam in ("hashgrid", "raymarch")},
        "packages": {m: _version(m) for m in
                     ("numpy", "cv2", "mediapipe", "imageio_ffmpeg", "scipy", "tensorboard",
                      "facexlib", "lpips", "tinycudann", "nerfacc", "ray", "rich",
                      "pocketsphinx")},
        "programs": _programs(),
        "audio_features": _audio_features(),
    }


def _audio_features() -> dict:
    """Each audio feature kind: available here, or what it needs (``data.audio``)."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    from nerfhead.audio.features import ow_available
    from nerfhead.audio.hubert import HUBERT_DIR, HUBERT_MODEL, find_local

    try:
        transformers = version("transformers")  # not imported: that takes seconds
    except PackageNotFoundError:
        transformers = None
    local = find_local()
    if transformers is None:
        hubert = "unavailable (needs the transformers package: pip install transformers)"
    elif local is not None:
        hubert = f"available (transformers {transformers}, weights {local})"
    elif os.environ.get("NERFHEAD_OFFLINE", "0") == "1":
        hubert = (f"unavailable (no {HUBERT_DIR}/ in the weights folders and NERFHEAD_OFFLINE=1; "
                  f"download {HUBERT_MODEL} where you have a network)")
    else:
        hubert = (f"transformers {transformers}; weights not here: {HUBERT_MODEL} is downloaded "
                  "on first use (1.26 GB)")
    return {"mel": "available",
            "ow": "available" if ow_available() else
                  "unavailable (pip install onnxruntime openwakeword==0.4.0)",
            "hubert": hubert}


def _programs() -> dict:
    """Programs nerfhead runs when present: the speech synthesisers of ``nerfhead respeak``."""
    import shutil

    from nerfhead.audio.respeak import ENGINES

    return {name: shutil.which(name) or f"unavailable (not installed: apt install {name}; "
                                         "`nerfhead respeak` uses it)" for name in ENGINES}


def run(args: argparse.Namespace) -> int:
    if args.run_dir is not None:
        return run_info(args)
    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    for key in ("nerfhead", "python", "torch", "torch_cuda"):
        print(f"{key:12s} {info[key]}")
    print(f"{'devices':12s} {', '.join(info['devices'])}")
    print(f"{'extension':12s} {info['extension']}")
    for fam, backends in info["backends"].items():
        for name, why in backends.items():
            print(f"{fam + ' ' + name:20s} {'available' if not why else 'unavailable: ' + why}")
    for name, ver in info["packages"].items():
        print(f"{name:16s} {ver}")
    for name, where in info["programs"].items():
        print(f"{name:16s} {where}")
    for name, what in info["audio_features"].items():
        print(f"{'audio ' + name:16s} {what}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import json
    import sys

    from nerfhead.train.checkpoint import CheckpointError
    from nerfhead.train.describe import describe_lines, describe_run

    try:
        d = describe_run(args.run_dir)
    except CheckpointError as e:
        print(f"nerfhead info: {e}", file=sys.stderr)
        return 2
    print(json.dumps(d, indent=2) if args.json else "\n".join(describe_lines(d)))
    return 0
