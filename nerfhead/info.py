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
    }


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
